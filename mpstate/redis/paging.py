"""A page of index entries: from one index zset, or from several merged by score.

An index zset scores each run by its created_at (epoch ms); a listing's order is (score, member),
oldest first or newest first, within a score window. One zset pages by rank
(``page_index-1.lua``: O(log N + page) at any offset). Several zsets (the shards of the global
indexes, or a group's status zsets when a listing asks for several statuses) are merged, reading
about a page's worth of entries however many runs they hold:

* **from a position in each zset** (``_merge_from``): each zset is read from there a little at a
  time, about twice its share of the page first, then more only from a zset whose last entry
  read still falls inside the page, until no unread entry can; usually one round trip;
* **where a page at an offset starts in each zset** (``_cut``): one entry of each zset at its
  share of the offset (one round trip); then, in rounds of one round trip, how many entries of
  every zset come at or before a few scores (``ZCOUNT``, O(log N)): first some of those
  entries' scores, then scores interpolated between the two that bracket the offset (or, with
  the window's end as a bound, entries sampled again inside the bracket). The entries at or
  before the lower score precede the page in every zset; once few lie between it and the
  offset, the merge starts there and skips them. Usually three round trips in all, two to find
  the start and one to merge, at any offset of any number of runs.

An entry found in two of the zsets with the same score (a run in two status zsets while a status
change is in flight) is listed once, but counts twice towards an offset past it: offsets into a
multi-status listing move by one while such a change is in flight, as they do for any
concurrent change.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import isqrt
from typing import Any

from mpstate.plans import Plan
from mpstate.redis.codec import text
from mpstate.redis.requests import Batch, Command, Script

__all__ = ["Entry", "Window", "read_page"]

#: An index entry: (score, member).
Entry = tuple[float, str]

#: Entries past the cut a merge may skip (per zset, or per entry of the page if more) before
#: narrowing the bracket further pays.
_SKIP_FACTOR = 4
#: Bracketing rounds at most; two are the rule. A bracket that is still wide after them (runs
#: bunched at a few scores) is merged through.
_MAX_ROUNDS = 8
#: Sampled scores counted in the first bracketing round.
_FIRST_CANDIDATES = 3
#: Where interpolated scores are put around the interpolated position of entry ``offset``, in
#: units of the square root of the bracket's entries (how far off an estimate usually is).
_AROUND = (-1, 1)


@dataclass(frozen=True, slots=True)
class Window:
    """The scores a listing covers (``-inf``/``+inf`` or epoch ms, both inclusive) and its order."""

    low: str
    high: str
    newest_first: bool

    @property
    def whole(self) -> bool:
        return self.low == "-inf" and self.high == "+inf"

    def read(self, zset: str, rank: int, count: int) -> Command | Script:
        """``count`` entries (-1: all) of ``zset`` from ``rank`` within the window, in order."""
        if self.whole:  # ranks are the zset's own: a plain ZRANGE
            stop = -1 if count < 0 else rank + count - 1
            rev = ("REV",) if self.newest_first else ()
            return Command(("ZRANGE", zset, rank, stop, *rev, "WITHSCORES"))
        order = "desc" if self.newest_first else "asc"
        return Script("page_index", [zset], [self.low, self.high, rank, count, order])

    def size(self, zset: str) -> Command:
        """How many entries of ``zset`` lie in the window."""
        if self.whole:
            return Command(("ZCARD", zset))
        return Command(("ZCOUNT", zset, self.low, self.high))

    def upto(self, zset: str, score: float) -> Command:
        """How many entries of ``zset`` in the window come at or before ``score``, in order."""
        bound = repr(score)
        bounds = (bound, self.high) if self.newest_first else (self.low, bound)
        return Command(("ZCOUNT", zset, *bounds))

    def ordered(self, entries: set[Entry]) -> list[Entry]:
        return sorted(entries, reverse=self.newest_first)

    def before(self, first: Entry, second: Entry) -> bool:
        """Whether ``first`` comes before ``second`` in the window's order."""
        return second < first if self.newest_first else first < second


#: The most members a Redis sorted set can hold (2^32 - 1): no rank reaches it.
_MAX_ZSET_SIZE = 2**32


def pairs(reply: Any) -> list[Entry]:
    """(score, member) entries from a ZRANGE/page_index reply, flat or paired."""
    if reply and isinstance(reply[0], list | tuple):
        return [(float(score), text(member)) for member, score in reply]
    return [(float(text(s)), text(m)) for m, s in zip(reply[0::2], reply[1::2], strict=True)]


def read_page(
    zsets: list[str], window: Window, offset: int, count: int | None, *, shares: int = 1
) -> Plan[list[Entry]]:
    """Entries ``[offset, offset + count)`` of ``zsets`` merged, in the window's order (``count``
    None: every entry from ``offset``). ``shares``: into how many even shares the entries are
    split (the global shards; 1: no even split, e.g. a tenant's status zsets), which sets how
    much of the page each zset is first asked for."""
    if offset >= len(zsets) * _MAX_ZSET_SIZE:  # past every entry, and past what a rank can say
        return []
    if len(zsets) == 1:
        return pairs((yield window.read(zsets[0], offset, -1 if count is None else count)))
    if count is None:  # everything: read it all
        replies = yield Batch(tuple(window.read(zset, 0, -1) for zset in zsets))
        return window.ordered({entry for reply in replies for entry in pairs(reply)})[offset:]
    if offset <= _skippable(count, len(zsets)):  # merged from the heads, skipping the offset
        return (
            yield from _merge_from(zsets, window, [0] * len(zsets), offset, count, shares=shares)
        )
    cut = yield from _cut(zsets, window, offset, count, shares)
    if cut is None:
        return []
    return (yield from _merge_from(zsets, window, cut, offset - sum(cut), count, shares=shares))


def _merge_from(
    zsets: list[str], window: Window, starts: list[int], skip: int, count: int, *, shares: int
) -> Plan[list[Entry]]:
    """Entries ``[skip, skip + count)`` of the zsets merged, each read from rank ``starts[i]``:
    twice its share of them first (a zset among uneven ones, all of them), then what may still
    belong."""
    need = skip + count
    read: list[list[Entry]] = [[] for _ in zsets]
    more = [min(need, -(-2 * need // shares) + 2)] * len(zsets)
    exhausted = [False] * len(zsets)
    while True:
        asked = [i for i, n in enumerate(more) if n > 0]
        replies = yield Batch(
            tuple(window.read(zsets[i], starts[i] + len(read[i]), more[i]) for i in asked)
        )
        for i, reply in zip(asked, replies, strict=True):
            got = pairs(reply)
            read[i] += got
            exhausted[i] = len(got) < more[i]
        head = window.ordered({entry for entries in read for entry in entries})[:need]
        more = [0] * len(zsets)
        for i, entries in enumerate(read):
            if exhausted[i]:
                continue
            # What zset i has not returned comes after its last entry read: it can still take a
            # place in the head if the head is short or ends after that entry.
            last = entries[-1]
            if len(head) < need or window.before(last, head[-1]):
                more[i] = need - sum(1 for entry in head if not window.before(last, entry))
        if not any(more):
            return head[skip:]


@dataclass(frozen=True, slots=True)
class _Bound:
    """One side of the bracket: a score (None: the window's end) and, in each zset, how many
    entries of the window come at or before it."""

    score: float | None
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)


def _cut(
    zsets: list[str], window: Window, offset: int, count: int, shares: int
) -> Plan[list[int] | None]:
    """A rank in each zset such that every entry before it precedes entry ``offset`` of the
    merged zsets and every entry from it does not, but for at most a few that the merge skips
    (``offset`` minus the ranks' sum); None when the window holds no more than ``offset``.

    The bracket: ``lower``, a score (None: the window's start) and how many entries of each zset
    come at or before it, all of them before entry ``offset``; ``upper``, the same for a score
    at or after that entry (None: the window's end, its sizes not read yet).
    """
    replies = yield Batch(tuple(window.read(zset, offset // shares, 1) for zset in zsets))
    lower = _Bound(None, [0] * len(zsets))
    upper: _Bound | None = None
    scores = _picked(replies)
    for _ in range(_MAX_ROUNDS):
        if scores:
            counts = yield Batch(tuple(window.upto(zset, s) for s in scores for zset in zsets))
            narrowed = False
            for n, score in enumerate(scores):
                at = _Bound(score, [int(c) for c in counts[n * len(zsets) : (n + 1) * len(zsets)]])
                if lower.total < at.total <= offset:
                    lower, narrowed = at, True
                elif offset < at.total and (upper is None or at.total < upper.total):
                    upper, narrowed = at, True
            if offset - lower.total <= _skippable(count, len(zsets)) or not narrowed:
                break
            scores = _interpolated(lower, upper, offset, window)
            if scores:
                continue
        if upper is None:  # the bracket ends at the window's end: how far is that?
            sizes = yield Batch(tuple(window.size(zset) for zset in zsets))
            upper = _Bound(None, [int(n) for n in sizes])
            if upper.total <= offset:
                return None
            if offset - lower.total <= _skippable(count, len(zsets)):
                break
        scores = _picked((yield from _sample(zsets, window, lower, upper, offset)))
        if not scores:  # no score left between the bounds: merge through the bracket
            break
    return lower.counts


def _skippable(count: int, zsets: int) -> int:
    """How many entries a merge may skip before narrowing the bracket further pays."""
    return _SKIP_FACTOR * max(count, zsets)


def _picked(replies: list[Any]) -> list[float]:
    """A few of the scores of sampled entries, evenly picked from their range: entry ``offset``
    most likely lies between two of them."""
    scores = sorted({score for reply in replies for score, _ in pairs(reply)})
    if len(scores) <= _FIRST_CANDIDATES:
        return scores
    step = len(scores) / _FIRST_CANDIDATES
    return [scores[int((n + 0.5) * step)] for n in range(_FIRST_CANDIDATES)]


def _sample(
    zsets: list[str], window: Window, lower: _Bound, upper: _Bound, offset: int
) -> Plan[list[Any]]:
    """One entry of each zset inside the bracket, at its share of the way to entry ``offset``."""
    inside = upper.total - lower.total
    ahead = offset - lower.total
    ranks = {}
    for i, (low, high) in enumerate(zip(lower.counts, upper.counts, strict=True)):
        if high > low and inside > 0:
            ranks[i] = low + min(high - low - 1, ahead * (high - low) // inside)
    replies = yield Batch(tuple(window.read(zsets[i], rank, 1) for i, rank in ranks.items()))
    return list(replies)


def _interpolated(lower: _Bound, upper: _Bound | None, offset: int, window: Window) -> list[float]:
    """Whole scores strictly between the bounds around where entry ``offset`` likely is:
    interpolated by score a little either side of it (``_AROUND``), and the middle (so a
    bracket shrinks even where runs are not spread evenly in time). None when a bound is the
    window's end."""
    if upper is None or lower.score is None or upper.score is None:
        return []
    if upper.total <= lower.total:
        return []
    low, high = sorted((lower.score, upper.score))
    inside = upper.total - lower.total
    ahead = offset - lower.total
    spread = isqrt(inside) + 1
    found = set()
    for target in (ahead + side * spread for side in _AROUND):
        fraction = min(max(target / inside, 0.0), 1.0)
        found.add(round(lower.score + (upper.score - lower.score) * fraction))
    found.add(round((low + high) / 2))
    return sorted(
        (float(score) for score in found if low < score < high), reverse=window.newest_first
    )
