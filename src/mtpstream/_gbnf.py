"""A GBNF reader and a model of llama.cpp's grammar stacks, for cost checks.

:class:`Rules` reads a grammar the way llama.cpp's parser does (groups become rules,
``S{m,n}`` becomes ``m`` inline copies plus ``n - m`` optional rules), without
recursion. :func:`probe` then plays llama.cpp's sampler against it: it builds the
initial stacks and feeds, ``steps`` times, the character that keeps the most stacks
alive, counting the stacks and the work of advancing them. llama.cpp spends about
the same work per character (plus a dedupe quadratic in the stacks), so a grammar
that stays within the budgets here stays cheap there; one that blows up on this
greedy input (``(a{0,100}){0,100}`` written as nested groups) is refused.

The greedy input is a heuristic: a grammar whose stacks only multiply on some other
input is not caught here (the static limits on size, nesting and schemas still hold).
"""

from __future__ import annotations

from collections import Counter

__all__ = ["GrammarSyntaxError", "Rules", "TooCostly", "probe"]

# an element: ("t", negated, ((lo, hi), ...)) a character set, ("r", rule id) a reference,
# ("k",) a token (<...>), which no character matches
Element = tuple[object, ...]
Alt = list[Element]
Pos = tuple[int, int, int]  # (rule, alternative, element)
Stack = tuple[Pos, ...]

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}
_HEX = {"x": 2, "u": 4, "U": 8}
_LLAMA_REPETITION_THRESHOLD = 2000  # llama.cpp turns a larger {m,n} maximum into {m,}


class GrammarSyntaxError(Exception):
    """This reader could not follow the grammar (llama.cpp gives the real message)."""


class TooCostly(Exception):
    """The grammar exceeded a budget; the message says which."""


class Rules:
    """The rules of a GBNF grammar: ``rules[id]`` is a list of alternatives."""

    def __init__(self, text: str, max_elements: int) -> None:
        self.src, self.pos, self.max_elements = text, 0, max_elements
        self.names: dict[str, int] = {}
        self.rules: list[list[Alt]] = []
        self.elements = 0
        self.max_depth = 0

    # ---------------------------------------------------------------- reading

    def rule_id(self, name: str) -> int:
        rid = self.names.get(name)
        if rid is None:
            rid = self.names[name] = self.new_rule()
        return rid

    def new_rule(self) -> int:
        self.rules.append([])
        return len(self.rules) - 1

    def space(self, newline_ok: bool) -> None:
        s, i, n = self.src, self.pos, len(self.src)
        while i < n and (s[i] in " \t#" or (newline_ok and s[i] in "\r\n")):
            if s[i] == "#":
                while i < n and s[i] not in "\r\n":
                    i += 1
            else:
                i += 1
        self.pos = i

    def name(self) -> str:
        s, i, n = self.src, self.pos, len(self.src)
        while i < n and s[i].isascii() and (s[i].isalnum() or s[i] == "-"):
            i += 1
        if i == self.pos:
            raise GrammarSyntaxError("expecting name")
        out, self.pos = s[self.pos : i], i
        return out

    def char(self) -> int:
        s, i = self.src, self.pos
        if i >= len(s):
            raise GrammarSyntaxError("unexpected end of input")
        if s[i] != "\\":
            self.pos = i + 1
            return ord(s[i])
        c = s[i + 1 : i + 2]
        if c in _HEX:
            digits = s[i + 2 : i + 2 + _HEX[c]]
            self.pos = i + 2 + len(digits)
            try:
                return int(digits, 16)
            except ValueError:
                raise GrammarSyntaxError("bad escape") from None
        if c in _ESCAPES:
            self.pos = i + 2
            return ord(_ESCAPES[c])
        raise GrammarSyntaxError("unknown escape")

    def parse(self) -> None:
        self.space(True)
        while self.pos < len(self.src):
            rid = self.rule_id(self.name())
            self.space(False)
            if not self.src.startswith("::=", self.pos):
                raise GrammarSyntaxError("expecting ::=")
            self.pos += 3
            self.space(True)
            self.alternates(rid)
            if self.pos < len(self.src) and self.src[self.pos] not in "\r\n":
                raise GrammarSyntaxError("expecting newline")
            self.space(True)

    def alternates(self, rid: int) -> None:
        """Read ``seq | seq ...`` into rule ``rid``; groups use an explicit stack."""
        s, n = self.src, len(self.src)
        # per open group: (rule id, its alternatives so far, start of the last item)
        frames: list[tuple[int, list[Alt], list[int]]] = [(rid, [[]], [-1])]
        while True:
            cur, alts, last = frames[-1]
            nested = len(frames) > 1
            alt = alts[-1]
            c = s[self.pos] if self.pos < n else ""
            start = len(alt)
            if not c or (not nested and c in "\r\n"):
                if nested:
                    raise GrammarSyntaxError("unexpected end of input")
                self.rules[cur] = alts
                return
            if c == '"':
                self.literal(alt)
            elif c == "[":
                self.char_class(alt)
            elif c == ".":
                self.pos += 1
                alt.append(("t", True, ()))
            elif c in "<!":
                self.token_ref(alt)
            elif c.isascii() and (c.isalnum() or c == "-"):
                alt.append(("r", self.rule_id(self.name())))
            elif c == "(":
                self.pos += 1
                sub = self.new_rule()
                alt.append(("r", sub))
                last[0] = start
                frames.append((sub, [[]], [-1]))
                self.max_depth = max(self.max_depth, len(frames) - 1)
                self.space(True)
                continue
            elif c == ")" and nested:
                self.pos += 1
                self.rules[cur] = alts
                frames.pop()
                self.space(len(frames) > 1)
                continue
            elif c == "|":
                self.pos += 1
                alts.append([])
                last[0] = -1
                self.space(True)
                continue
            elif c in "*+?{":
                self.repetition(alt, last[0])
                self.space(nested)
                continue
            else:
                raise GrammarSyntaxError(f"unexpected {c!r}")
            last[0] = start
            self.count_elements(len(alt) - start)
            self.space(nested)

    def token_ref(self, alt: Alt) -> None:
        """Read a token reference ``<...>`` / ``!<...>`` (at its first character)."""
        end = self.src.find(">", self.pos)
        if end < 0:
            raise GrammarSyntaxError("expecting '>'")
        self.pos = end + 1
        alt.append(("k",))

    def count_elements(self, added: int) -> None:
        self.elements += added
        if self.elements > self.max_elements:
            raise TooCostly(f"the grammar has more than {self.max_elements} elements")

    def literal(self, alt: Alt) -> None:
        """Read ``"..."`` (at its opening quote): one terminal per character."""
        s, n = self.src, len(self.src)
        self.pos += 1
        while self.pos < n and s[self.pos] != '"':
            v = self.char()
            alt.append(("t", False, ((v, v),)))
        if self.pos >= n:
            raise GrammarSyntaxError("unexpected end of input")
        self.pos += 1

    def char_class(self, alt: Alt) -> None:
        """Read ``[...]`` / ``[^...]`` (at its ``[``): one terminal of ranges."""
        s, n = self.src, len(self.src)
        self.pos += 1
        neg = s[self.pos : self.pos + 1] == "^"
        self.pos += neg
        ranges = []
        while self.pos < n and s[self.pos] != "]":
            lo = self.char()
            hi = lo
            if s[self.pos : self.pos + 1] == "-" and s[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                hi = self.char()
            ranges.append((lo, hi))
        if self.pos >= n:
            raise GrammarSyntaxError("unexpected end of input")
        self.pos += 1
        alt.append(("t", neg, tuple(ranges)))

    def repetition(self, alt: Alt, start: int) -> None:
        s = self.src
        c = s[self.pos]
        if c == "{":
            end = s.find("}", self.pos)
            if end < 0:
                raise GrammarSyntaxError("expecting '}'")
            lo_s, comma, hi_s = s[self.pos + 1 : end].replace(" ", "").partition(",")
            self.pos = end + 1
            if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
                raise GrammarSyntaxError("bad repetition")
            lo = int(lo_s)
            hi: int | None = int(hi_s) if hi_s else (None if comma else lo)
            if lo > _LLAMA_REPETITION_THRESHOLD:
                raise GrammarSyntaxError("llama.cpp refuses it")
            if hi is not None and hi > _LLAMA_REPETITION_THRESHOLD:
                hi = None
        else:
            self.pos += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        if start < 0:
            raise GrammarSyntaxError("expecting preceding item")
        item = alt[start:]
        copies = lo + (hi - lo if hi is not None else 1)
        self.elements += len(item) * copies
        if self.elements > self.max_elements:
            raise TooCostly(f"the grammar expands to more than {self.max_elements} elements")
        del alt[start:]
        alt.extend(item * lo)
        if hi is None:  # S' ::= S S' |
            rec = self.new_rule()
            self.rules[rec] = [[*item, ("r", rec)], []]
            alt.append(("r", rec))
        elif hi > lo:  # S'(k) ::= S S'(k-1) |   ...   S'(1) ::= S |
            prev: int | None = None
            for _ in range(hi - lo):
                rec = self.new_rule()
                self.rules[rec] = [[*item, ("r", prev)] if prev is not None else list(item), []]
                prev = rec
            alt.append(("r", prev))


def _matches(el: Element, c: int) -> bool:
    if el[0] != "t":
        return False
    ranges = el[2]
    inside = any(lo <= c <= hi for lo, hi in ranges)  # type: ignore[attr-defined]
    return inside != el[1]


def _some_char(el: Element) -> int:
    """A character ``el`` accepts (or -1)."""
    if el[0] != "t":
        return -1
    if not el[1]:
        return int(el[2][0][0]) if el[2] else -1  # type: ignore[index]
    for c in (ord("a"), ord("0"), ord(" "), ord("{"), ord('"'), 0x4E00):
        if _matches(el, c):
            return c
    return -1


class _Sim:
    def __init__(self, rules: list[list[Alt]], max_stacks: int, max_step_work: int, max_work: int) -> None:
        self.rules, self.max_stacks = rules, max_stacks
        self.max_step_work, self.max_work = max_step_work, max_work
        self.work = self.step_start = 0
        self.left_recursive = False

    def advance(self, stack: Stack, out: set[Stack]) -> None:
        """llama_grammar_advance_stack: expand references until a terminal is on top."""
        todo = [stack]
        seen: set[Stack] = set()
        limit = len(stack) + len(self.rules) + 1
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            self.work += 1
            if self.work - self.step_start > self.max_step_work:
                raise TooCostly(
                    f"advancing its parse stacks over one character takes more than "
                    f"{self.max_step_work} steps"
                )
            if self.work > self.max_work:
                raise TooCostly(f"advancing its parse stacks takes more than {self.max_work} steps in all")
            if not s:
                out.add(s)
                continue
            rid, a, i = s[-1]
            alt = self.rules[rid][a]
            el = alt[i]
            if el[0] != "r":
                out.add(s)
                continue
            if len(s) > limit:  # grew without reading: left recursion, llama.cpp refuses it
                self.left_recursive = True
                return
            base = s[:-1] + (((rid, a, i + 1),) if i + 1 < len(alt) else ())
            sub = int(el[1])  # type: ignore[call-overload]
            for a2, alt2 in enumerate(self.rules[sub] if sub < len(self.rules) else []):
                todo.append((*base, (sub, a2, 0)) if alt2 else base)

    def check(self, stacks: set[Stack]) -> None:
        if len(stacks) > self.max_stacks:
            raise TooCostly(f"it keeps more than {self.max_stacks} parse stacks alive")

    def top(self, s: Stack) -> Element:
        rid, a, i = s[-1]
        return self.rules[rid][a][i]


def probe(rules: Rules, steps: int, max_stacks: int, max_step_work: int, max_work: int) -> tuple[int, int]:
    """Raise :class:`TooCostly` if llama.cpp's stacks for ``rules`` outgrow the budgets
    within ``steps`` greedily chosen characters (see the module docstring).

    Returns (the most stacks seen at once, the stack expansions spent)."""
    root = rules.names.get("root")
    if root is None:
        return 0, 0
    sim = _Sim(rules.rules, max_stacks, max_step_work, max_work)
    stacks: set[Stack] = set()
    for a, alt in enumerate(rules.rules[root]):
        sim.advance(((root, a, 0),) if alt else (), stacks)
    sim.check(stacks)
    most = len(stacks)
    for _ in range(steps):
        if sim.left_recursive:
            break
        tops = Counter(s[-1] for s in stacks if s)
        elements = {pos: sim.top((pos,)) for pos in tops}
        candidates = {_some_char(el) for el in elements.values()} - {-1}
        if not candidates:
            break
        best = max(
            sorted(candidates), key=lambda c: sum(n for p, n in tops.items() if _matches(elements[p], c))
        )
        nxt: set[Stack] = set()
        sim.step_start = sim.work
        for s in stacks:
            if s and _matches(elements[s[-1]], best):
                rid, a, i = s[-1]
                moved = s[:-1] + (((rid, a, i + 1),) if i + 1 < len(rules.rules[rid][a]) else ())
                sim.advance(moved, nxt)
        sim.check(nxt)
        stacks = nxt
        most = max(most, len(stacks))
    return most, sim.work
