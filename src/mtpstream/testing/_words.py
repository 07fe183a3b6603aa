"""Vocabulary of common English words used by the synthetic tokenizer.

The list is hand-written for this project: ordinary lowercase English words
(letters only), grouped loosely by theme.  Order matters only in that the
synthetic tokenizer assigns token ids in this order, so the list is part of the
model file format (see ``FORMAT_VERSION``).
"""

from __future__ import annotations

_TEXT = """
the be to of and a in that have it for not on with he as you do at this but his
by from they we say her she or an will my one all would there their what so up
out if about who get which go me when make can like time no just him know take
people into year your good some could them see other than then now look only
come its over think also back after use two how our work first well way even new
want because any these give day most us is are was were been has had did does
said made went came got took saw knew thought told found gave called
end start begin stop open close again still never always often sometimes here
where why while before under between through during without within around along
across behind beyond near far above below inside outside toward against among
man woman child children boy girl friend family mother father brother sister son
daughter baby parent husband wife king queen teacher doctor student worker farmer
house home room door window wall floor roof kitchen garden yard street road city
town village country world land sea ocean river lake mountain hill valley forest
tree flower grass leaf root seed plant field farm island beach desert sky sun moon
star cloud rain snow wind storm weather fire water air earth stone rock sand ice
morning evening night noon week month today tomorrow yesterday hour minute second
spring summer autumn winter season moment minute history future past present
red blue green yellow black white brown orange purple pink gray golden silver
dog cat horse cow pig sheep goat chicken duck bird fish bear wolf fox lion tiger
mouse rabbit deer frog snake bee ant spider whale shark eagle owl crow
bread butter cheese milk egg meat apple banana orange grape lemon rice soup salt
sugar honey tea coffee juice cake pie cookie dinner lunch breakfast meal food
table chair bed desk lamp clock book paper pen pencil letter word page story
picture photo map box bag cup plate bowl spoon fork knife bottle glass key lock
car bus train ship boat plane bicycle truck wheel engine road bridge station
shop store market bank school church hospital office library museum theater park
money price cost dollar coin card gift prize ticket bill
head face eye ear nose mouth tooth teeth lip neck shoulder arm hand finger leg
knee foot toe heart blood bone skin hair brain body back chest stomach
shirt coat hat shoe dress skirt jacket sock glove ring button pocket
music song dance game sport ball team player match race goal score
idea thought reason answer question problem result fact truth lie secret
name number line point part place thing case group system program service area
side kind head life hand job eye word business issue member power government
company health law war art level office door team week company
big small large little long short high low old young new early late hot cold warm
cool dry wet hard soft heavy light strong weak fast slow quick easy difficult
good bad best better worse worst great fine nice happy sad angry calm quiet loud
rich poor full empty clean dirty bright dark deep wide narrow thick thin sharp
safe dangerous true false real simple clear strange funny serious ready busy free
open closed right wrong left same different important possible whole main certain
sure own only next last few many much more less each every both either neither
beautiful pretty ugly brave kind gentle proud honest careful lucky
walk run jump swim fly climb sit stand lie fall rise push pull carry throw catch
hold drop lift move turn stop wait stay leave arrive return follow lead enter
eat drink cook bake boil cut wash clean dry fill pour mix taste smell
read write draw paint sing play listen hear speak talk tell ask answer call shout
laugh smile cry sleep wake dream rest breathe live die grow change become seem
build break fix make create destroy cover hide find lose keep save spend pay buy
sell send bring fetch show teach learn study remember forget understand believe
hope wish love hate like enjoy fear worry help need try choose decide agree allow
win fight kill hurt heal touch feel hit kick shake wave point count measure
watch look see notice search test check compare explain describe discuss argue
plan prepare finish complete continue repeat happen appear disappear exist
travel visit drive ride sail land cross pass reach join meet share borrow lend
open shut ring knock
very really quite too almost enough rather perhaps maybe probably certainly
together alone away soon already yet once twice ever forward backward upward
quickly slowly easily suddenly finally usually nearly simply clearly
one two three four five six seven eight nine ten eleven twelve twenty thirty
hundred thousand million half dozen
first second third fourth fifth
i me myself yourself himself herself itself ourselves themselves someone anyone
everyone nobody something anything everything nothing somewhere anywhere
everywhere nowhere
how what whose whom whether although though unless until since whereas
above yes no please thanks hello goodbye sorry okay
apple pear peach plum cherry berry melon carrot potato tomato onion bean corn pea
nut oil pepper garlic ginger olive
iron gold copper steel wood cotton wool silk leather plastic glass metal
energy force speed mass heat sound wave signal light shadow color shape size
circle square triangle line curve edge corner center middle surface top bottom
north south east west front rear
doctor nurse driver pilot captain soldier sailor artist writer singer painter
lawyer judge police officer guard chef baker builder engineer scientist
computer phone screen keyboard camera radio television machine tool hammer nail
rope chain needle thread wire pipe pump motor battery
language voice sentence message letter note list record report news
science math history geography music art physics chemistry biology
test exam lesson class grade course homework
holiday party wedding birthday festival concert
danger trouble accident mistake chance luck fortune success failure
peace war battle army enemy victory defeat
freedom justice duty right rule law order
journey trip adventure road path trail track
dream memory mind spirit soul heart feeling emotion
silence noise music rhythm melody
animal creature insect monster dragon giant ghost angel
castle tower palace temple cave tunnel harbor port
circle ring cycle loop spiral
window mirror curtain carpet blanket pillow towel
brush comb soap bucket basket broom
market trade price profit loss debt
coast shore cliff bay wave tide
thunder lightning fog mist frost breeze
shadow darkness dawn dusk midnight
cabin hut tent barn shed fence gate
harvest crop wheat barley oat hay
kettle pan pot oven stove sink
puzzle riddle joke trick magic
wolf fox badger otter beaver squirrel
candle lantern torch flame spark smoke ash
feather wing nest egg shell
planet galaxy comet rocket orbit
ladder stair step floor ceiling
honey jam syrup cream sauce
village county region nation empire
bottle jar can barrel crate
hammer saw drill screw bolt
sat ran ate drank slept woke wrote read spoke broke chose drove rode flew grew
knew threw caught taught bought brought fought thought sought built sent spent
lent meant felt kept left lost met paid sold told held stood understood heard
became began sang swam rang sank drew won hung led fed fled bent lit shot hid
beat bit blew bled dug froze forgave forgot hurt lay laid shook shone shut
sprang stole struck stuck swore swept tore wore wept wound
walked talked looked asked played worked wanted needed helped called turned
moved lived loved liked opened closed started stopped tried used waited watched
jumped laughed smiled cried answered returned followed carried finished happened
walking talking looking asking playing working going coming running reading
writing eating sleeping sitting standing thinking making taking giving seeing
days years times things people ways words names hands eyes friends books houses
cars trees birds dogs cats boys girls men women children stories songs games
rooms doors windows streets cities towns countries lands seas rivers stars
ideas questions answers problems reasons parts places lines points groups
cats apples flowers leaves stones hills fields farms gardens roads
small smaller smallest big bigger biggest old older oldest young younger
warmer colder longer shorter higher lower faster slower stronger weaker
happier sadder better nicer larger
about against almost already also although among another anybody anyhow
because beside besides beneath beyond despite down except inside instead
less likely off onto past per plus round than throughout till upon via within
able afraid alive asleep awake aware certain common correct early entire equal
famous final foreign formal former general glad human huge ill local lovely
lonely mad modern natural nervous normal obvious official ordinary pale
perfect pleasant popular private public quick rare regular rough round royal
rude sick silent similar single slight smooth solid special square steady
still sudden sweet tall terrible tiny tired total tough typical useful usual
various warm weird wild wise wonderful worried yellow young
able accept add admit advise afford agree aim allow announce appear apply
arrange attack attend avoid bake bathe beg behave belong bend bet bite blow
boast bother bow brush burn bury chase cheer chew clap collect comb complain
cough crash crawl dare deliver depend deserve dig divide doubt drag dress drown
earn escape excuse expect fail fasten fetch float fold force frighten gather
glow grab greet grin guard guess hang hunt hurry improve include increase
invent invite jog judge kneel knit labor last launch lean lick limp load
manage mark marry melt mend mourn nod obey offer order own pack paint pinch
place plant pray present pretend print promise protect provide punish race
rain reach receive refuse relax remain remove repair reply rescue rob roll
rub rush scare scream settle shiver shop sign sink skip slap slip sneeze
snore spell spill spoil spray squeeze stare steal step stir suffer suggest
supply support suppose surprise surround swing tap tear tease tempt thank
tie tickle trace train trap treat tremble trust type unite unlock vanish
visit warn wander weigh whisper whistle wink wipe wonder wrap yawn yell
account act addition adult advice age agent air amount anger angle apartment
army arrival article aspect attempt attention audience aunt author average
award baby balance band base basis bath battery beauty bedroom beer bell
belt bench benefit bird birth bit blade block board body bomb border bottom
brain branch brand breath brick bride bridge brother budget bunch burden
butter cabinet cable calendar campaign camp candy capital career carpet case
cash cast category cause ceiling cell century chain challenge champion
channel chapter character charge chart check chemical chest chief choice
cigarette citizen claim clerk client climate clothes club coach coast
collar college column comfort command comment committee community
competition concept concern condition conference connection contest context
contract control conversation copy corner council courage court cousin cow
crack craft credit crew crime crowd crown culture currency curtain customer
cycle damage data date deal death debate decision degree delay demand
department deposit design detail device diamond diet dimension direction
dirt discount disease dish distance district division document dollar
drama drawer drawing drink driver dust duty economy edge education effect
effort election element emergency employee employer engine entrance entry
environment equipment error essay estate event evidence exam example
exchange excitement exercise experience expert extent factor factory failure
fan fashion fault feature fee fiction figure file film finance finger
flag flight floor focus fold football forest form foundation frame freedom
fruit fuel fun function fund funeral furniture gap garage gas gate gear
gene gentleman ghost glove god grace grade grain grandfather grandmother
grass ground growth guest guide guitar gun habit hall hat heat height hero
highway hole honey horror host hotel husband image impact income index
industry infant injury insect instance instruction instrument insurance
interest internet interview invention investment iron item jacket jail jelly
jewel joint joke journal judgment juice jungle jury kid kitchen knee
knowledge ladder lady layer leader league leather lecture length lesson
level license lift limit link liquid list literature load loan location
luggage machine magazine mail manager manner marriage material matter meal
meaning measure meat medicine meeting member memory menu mess metal method
mind mine minister mirror mission mode model moment mood motor mountain
movie mud muscle nail nature neck needle neighbor nerve network newspaper
noise novel nurse object ocean offer oil opinion option orange order organ
origin outcome oven owner pack pain pair panel parent passage passenger
patient pattern pause peace penalty pension percent period permission person
phase philosophy phrase piano piece pile pilot pipe pitch plan plastic
platform pocket poem poet poetry police policy pool population position
post pot potato pound powder practice prayer preference pressure priest
prince princess principle priority prison process product profession
professor progress project proof property proposal protection purpose quality
quantity quarter queen radio range rate reaction reality recipe region
relation release rent republic request research reserve resource response
responsibility restaurant revenue review reward rice ride ring risk river
role roof routine row rule safety sail salad salary sale sample scale
scene schedule scheme scholar screen script sector security selection sense
series servant session setting shade shame shape shelf shell shelter shift
shock shop shot shower signature silver singer sink skill skirt slice
slope smoke snake society sock soldier solution soul source space speech
spirit spot staff stage stake standard statement status steak stock
stomach storage strategy strength stress string structure studio style
subject substance suit summary supermarket surgery survey suspect sweater
symbol sympathy target task taste tax teacher technology telephone
temperature tendency tension term text theme theory thread throat thumb
tie tip title toast tongue topic tour tourist towel tower toy trade
tradition traffic transport trash treasure treaty trend trial truck
tune uncle union unit university user valley value variety vehicle version
victim video view village violence virus vision visitor volume voter
wage wall wealth weapon web wedding weekend weight welcome wheel wine
wing winner wisdom witness wood worker yard youth zone
"""


def english_words() -> list[str]:
    """Return the unique words of the built-in list, in first-seen order."""
    seen: set[str] = set()
    out: list[str] = []
    for word in _TEXT.split():
        if word not in seen and word.isascii() and word.isalpha() and word.islower():
            seen.add(word)
            out.append(word)
    return out
