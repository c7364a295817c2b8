"""Suffix-automaton drafting (SAM-Decoding, Hu et al. 2024): match the longest suffix of each row's text against
the row's earlier text, its sibling rows and a pool of finished texts, and propose what followed the match.

Everything is kept incrementally, in pure Python on ints: a row's automaton grows by the tokens each step commits
(amortised O(1) per token), and each match is the classic automaton walk "state + matched length", advanced token
by token, so a step's cost does not grow with the text. A row's automaton covers all of its text but the newest
token: every occurrence it knows is an earlier one with at least one follower, which excludes the trivial match of
the suffix with itself without any position filtering.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from scylla.drafters.base import Draft, DraftContext, Drafter
from scylla.drafters.tree import trie_draft
from scylla.errors import ConfigError

SEP = -1  # ends every text in a pool: no row token equals it, so no match spans two texts
RECENT_LINKS = 16  # suffix links up from the newest state whose end positions each extend refreshes
MIN_MAX_TOKENS = 64


class SuffixAutomaton:
    """The suffix automaton of ``tokens``, built online (Blumer et al. 1985); ``extend`` adds one token in amortised
    O(1) (plus copying a split state's transitions). States are ints, 0 the root (the empty string); per state:
    ``next`` (token -> state), ``link`` (suffix link), ``length`` (of its longest string) and ``pos``, an end
    position in ``tokens`` of its strings (an occurrence's last index).

    pos is the most recent end for the newest state and the ``recent_links`` states up its suffix-link chain, which
    each extend refreshes; a state further up (a short string with many occurrences, in very repetitive text) keeps
    an older, still valid end. Refreshing the whole chain would cost O(text) per token on text like "aaaa...".
    """

    def __init__(self, tokens: Sequence[int] = (), recent_links: int | None = None):
        self.recent_links = RECENT_LINKS if recent_links is None else recent_links
        self.next: list[dict[int, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        self.pos = [-1]
        self.tokens: list[int] = []
        self.last = 0  # the state of the whole text
        for token in tokens:
            self.extend(token)

    def _state(self, length: int, link: int, pos: int, next_: dict[int, int]) -> int:
        self.next.append(next_)
        self.link.append(link)
        self.length.append(length)
        self.pos.append(pos)
        return len(self.length) - 1

    def extend(self, token: int) -> None:
        """Append one token to the text."""
        i = len(self.tokens)
        self.tokens.append(token)
        nxt, link, length = self.next, self.link, self.length
        cur = self._state(length[self.last] + 1, 0, i, {})
        p = self.last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:  # split q: its strings up to length[p] + 1 also end at i now
                clone = self._state(length[p] + 1, link[q], self.pos[q], dict(nxt[q]))
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        s, steps = link[cur], self.recent_links
        while s > 0 and steps > 0:  # i ends every string up the chain: refresh the nearest ones
            self.pos[s] = i
            s, steps = link[s], steps - 1

    def settle(self, state: int, length: int) -> int:
        """The state holding the string of ``length`` that ``state`` held before later extends split it."""
        while state and length <= self.length[self.link[state]]:
            state = self.link[state]
        return state

    def walk(self, state: int, length: int, token: int) -> tuple[int, int]:
        """Extend the match (state, length) of a text's suffix by the text's next token: the new longest suffix of
        the text that occurs in this automaton's text, as (state, length)."""
        nxt = self.next
        while state and token not in nxt[state]:
            state = self.link[state]
            length = self.length[state]
        if token in nxt[state]:
            return nxt[state][token], length + 1
        return 0, 0

    def follow(self, state: int, length: int, tokens: Sequence[int]) -> tuple[int, int]:
        """``walk`` over several tokens, after settling a match kept while the automaton grew."""
        state = self.settle(state, length)
        for token in tokens:
            state, length = self.walk(state, length, token)
        return state, length

    def match(self, tokens: Sequence[int]) -> tuple[int, int]:
        """The longest suffix of ``tokens`` that occurs in the text, as (state, length), walked from the root."""
        return self.follow(0, 0, tokens)


def read(tokens: list[int], pending: int | None, start: int, k: int, cyclic: bool) -> list[int]:
    """Up to k tokens of the text ``tokens`` (+ [pending], a newest token the automaton lacks) from ``start``,
    stopping at a SEP or the end; cyclic: past the end keep copying from ``start`` on, i.e. read the text as
    repeating with period (end - start), as a row that keeps repeating itself would go on."""
    end = len(tokens) + (pending is not None)
    out: list[int] = []
    for i in range(start, start + k):
        if i < len(tokens):
            token = tokens[i]
        elif i < end:
            token = pending
        elif cyclic:
            token = out[i - end]
        else:
            break
        if token == SEP:
            break
        out.append(token)
    return out


class SuffixPool:
    """Finished texts that later requests may draft from (earlier samples or rounds of a problem), in one automaton.

    ``add(tokens)`` appends a text (token ids, e.g. a sample's generated tokens); ``clear()`` forgets them all. Give
    one pool to a drafter (``SuffixDrafter(pool=...)``) and add each finished sample: the next generate calls match
    against it. Memory: past max_tokens tokens the pool is rebuilt from its newest max_tokens // 2 (oldest texts go
    first), an O(max_tokens) rebuild at most once per max_tokens // 2 tokens added: amortised O(1) per token. An
    automaton takes about 0.4 kB per token (Python objects): about 50 MB at the default bound. The pool is kept
    across generate calls until ``clear()``: clear it between problems if only samples of one problem should match.
    """

    def __init__(self, max_tokens: int = 1 << 17):
        if max_tokens < MIN_MAX_TOKENS:
            raise ConfigError(f"pool max_tokens must be >= {MIN_MAX_TOKENS}, got {max_tokens}")
        self.max_tokens = max_tokens
        self.sam = SuffixAutomaton()
        self.version = 0  # bumped by every change: matches into the pool are then walked afresh

    def add(self, tokens: Sequence[int] | torch.Tensor) -> None:
        """Append one finished text (1-D token ids)."""
        text = [int(t) for t in (tokens.reshape(-1).tolist() if isinstance(tokens, torch.Tensor) else tokens)]
        if any(t < 0 for t in text):
            raise ConfigError("pool texts are token ids (>= 0); strip padding first")
        for token in text + [SEP]:
            self.sam.extend(token)
        if len(self.sam.tokens) > self.max_tokens:
            self.sam = SuffixAutomaton(self.sam.tokens[-(self.max_tokens // 2):])
        self.version += 1

    def clear(self) -> None:
        self.sam = SuffixAutomaton()
        self.version += 1

    def __len__(self) -> int:
        return len(self.sam.tokens)


class _Row:
    """One request: an automaton over its text but the newest token, that token, the match of its text in its own
    automaton (the longest suffix that occurred earlier), and its matches in the pool and in sibling rows."""

    def __init__(self, tokens: list[int], max_tokens: int):
        self.max_tokens = max_tokens
        self.total = len(tokens)  # tokens seen, including any a rebuild dropped
        self.pool_walk: tuple[int, int, int] | None = None  # (pool version, state, length)
        self.peer_walks: dict[int, tuple[SuffixAutomaton, int, int]] = {}  # peer index -> (its automaton, match)
        self._build(tokens if len(tokens) <= max_tokens else tokens[-(max_tokens // 2):])

    def _build(self, tokens: list[int]) -> None:
        self.sam = SuffixAutomaton()
        self.newest = tokens[0]
        self.own = (0, 0)
        for token in tokens[1:]:
            self._step(token)

    def _step(self, token: int) -> None:
        self.sam.extend(self.newest)
        state, length = self.own
        self.own = self.sam.walk(self.sam.settle(state, length), length, token)
        self.newest = token

    def push(self, token: int) -> None:
        """Append a committed token; past max_tokens, rebuild from the newest max_tokens // 2 tokens."""
        self.total += 1
        if len(self.sam.tokens) + 2 > self.max_tokens:
            self._build((self.sam.tokens + [self.newest, token])[-(self.max_tokens // 2):])
        else:
            self._step(token)

    def text(self) -> list[int]:
        return self.sam.tokens + [self.newest]


class SuffixDrafter(Drafter):
    """Per row, the longest suffix of the row's text (prompt + accepted tokens) that occurred earlier in the row,
    in a sibling row (``share_rows``) or in the ``pool``; proposes what followed its most recent occurrence (see
    SuffixAutomaton.pos), up to num_draft_tokens and the row's budget. A match in the row's own text that runs into
    the row's end is continued periodically (a repeating row drafts its repetition in full). Ties prefer the row
    itself, then siblings, then the pool. Matches shorter than min_match draft nothing; the default 1 drafts from
    any match, as prompt lookup does. A deterministic drafter (probs None): lossless at any temperature.

    share_rows: the rows of a batch are samples of one problem; each row also matches its siblings' texts (also
    those of rows that already finished in this call), at O(batch) walks per committed token per row. A sibling
    match is advanced over the row's new tokens only: text a sibling writes later that repeats what this row wrote
    earlier lengthens the match step by step as the row's next tokens keep matching, not at once.

    branches > 1: a tree draft of up to ``branches`` continuations with distinct first tokens: the chain's first,
    then those after other occurrences of the match (by the automaton's transitions, most recent first), then after
    shorter suffix matches (up to ``branches`` suffix links per source), then the other sources' matches.

    max_tokens bounds each row's automaton: a row longer than that is rebuilt from its newest max_tokens // 2
    tokens, O(max_tokens) at most once per max_tokens // 2 tokens, so still amortised O(1) per token.
    ``last_match_length`` (B,): after ``propose``, each row's longest match (also those below min_match).
    """

    name = "suffix"

    def __init__(
        self,
        num_draft_tokens: int = 10,
        min_match: int = 1,
        branches: int = 1,
        max_tokens: int = 1 << 16,
        pool: SuffixPool | None = None,
        share_rows: bool = False,
    ):
        if num_draft_tokens < 1 or min_match < 1 or branches < 1:
            raise ConfigError(f"num_draft_tokens, min_match and branches must be >= 1, got {num_draft_tokens}, "
                              f"{min_match} and {branches}")
        need = max(MIN_MAX_TOKENS, 2 * (min_match + num_draft_tokens))
        if max_tokens < need:
            raise ConfigError(f"max_tokens must be >= {need} (64, and twice min_match + num_draft_tokens: a rebuilt "
                              f"row keeps max_tokens // 2 tokens), got {max_tokens}")
        self.num_draft_tokens, self.min_match, self.branches = num_draft_tokens, min_match, branches
        self.max_tokens = max_tokens
        self.pool = pool
        self.share_rows = share_rows
        self.rows: list[_Row] = []
        self.peers: list[_Row] = []  # every row of this call when share_rows (finished ones stay matchable)
        self.last_match_length: torch.Tensor | None = None

    def start(self, ctx: DraftContext) -> None:
        T = ctx.tokens.shape[1]
        self.rows = [_Row(row[T - n:], self.max_tokens)
                     for row, n in zip(ctx.tokens.tolist(), ctx.lengths.tolist())]
        self.peers = list(self.rows) if self.share_rows else []
        for row in self.rows:
            self._walk_sources(row, [])

    def _walk_sources(self, row: _Row, new: list[int]) -> None:
        """Advance the row's pool and sibling matches over its new tokens, walking afresh what changed under them."""
        if self.pool is not None:
            sam = self.pool.sam
            if row.pool_walk is None or row.pool_walk[0] != self.pool.version:
                row.pool_walk = (self.pool.version, *sam.match(row.text()))
            else:
                row.pool_walk = (self.pool.version, *sam.follow(row.pool_walk[1], row.pool_walk[2], new))
        for j, peer in enumerate(self.peers):
            if peer is row:
                continue
            walk = row.peer_walks.get(j)
            if walk is None or walk[0] is not peer.sam:  # new, or the sibling rebuilt its automaton
                row.peer_walks[j] = (peer.sam, *peer.sam.match(row.text()))
            else:
                row.peer_walks[j] = (peer.sam, *peer.sam.follow(walk[1], walk[2], new))

    def _sync(self, ctx: DraftContext) -> None:
        """Add each row's tokens committed since the last call (the last lengths[b] - seen of row b)."""
        counts = [n - row.total for n, row in zip(ctx.lengths.tolist(), self.rows)]
        width = max(counts, default=0)
        tails = ctx.tokens[:, -width:].tolist() if width > 0 else [[] for _ in self.rows]
        news = []
        for row, count, tail in zip(self.rows, counts, tails):
            new = tail[len(tail) - count:] if count > 0 else []
            for token in new:
                row.push(token)
            news.append(new)
        for row, new in zip(self.rows, news):  # after every row grew, so siblings see each other's new text
            self._walk_sources(row, new)

    def update(self, accepted: torch.Tensor, ctx: DraftContext) -> None:
        self._sync(ctx)

    def _sources(self, row: _Row) -> list[tuple[int, SuffixAutomaton, int, int | None, bool]]:
        """The row's matches, longest first (ties: itself, siblings, pool): (length, automaton, state, pending
        token, cyclic)."""
        state, length = row.own
        out = [(length, row.sam, state, row.newest, True)]
        for j, (sam, state, length) in sorted(row.peer_walks.items()):
            out.append((length, sam, state, self.peers[j].newest, False))
        if row.pool_walk is not None:
            out.append((row.pool_walk[2], self.pool.sam, row.pool_walk[1], None, False))
        return sorted(out, key=lambda s: -s[0])

    def _branches(self, sources, limit: int) -> list[list[int]]:
        """Up to ``branches`` continuations with distinct first tokens, best first (see the class docstring)."""
        out: list[list[int]] = []
        firsts: set[int] = set()
        for length, sam, state, pending, cyclic in sources:
            if length < self.min_match:
                break
            for _ in range(self.branches):
                if not state or sam.length[state] < self.min_match:
                    break
                followers = heapq.nlargest(self.branches, sam.next[state].values(), key=sam.pos.__getitem__)
                for begin in [sam.pos[state] + 1] + [sam.pos[s] for s in followers]:
                    branch = read(sam.tokens, pending, begin, limit, cyclic)
                    if branch and branch[0] not in firsts:
                        firsts.add(branch[0])
                        out.append(branch)
                        if len(out) == self.branches:
                            return out
                state = sam.link[state]
        return out

    def propose(self, ctx: DraftContext) -> Draft:
        """A chain Draft (B, g) (parents None), or with branches > 1 a tree Draft (B, N); probs None."""
        self._sync(ctx)
        device = ctx.tokens.device
        matches, drafts = [], []
        for row, budget in zip(self.rows, ctx.budget.tolist()):
            sources = self._sources(row)
            length, sam, state, pending, cyclic = sources[0]
            matches.append(length)
            limit = min(self.num_draft_tokens, budget)
            if limit <= 0 or length < self.min_match:
                drafts.append([])
            elif self.branches > 1:
                drafts.append(self._branches(sources, limit))
            else:
                drafts.append(read(sam.tokens, pending, sam.pos[state] + 1, limit, cyclic))
        self.last_match_length = torch.tensor(matches, dtype=torch.long, device=device)
        if self.branches > 1:
            return trie_draft(drafts, device)
        g = max((len(d) for d in drafts), default=0)
        tokens = torch.zeros(len(drafts), g, dtype=torch.long)
        for b, d in enumerate(drafts):
            tokens[b, : len(d)] = torch.tensor(d, dtype=torch.long)
        return Draft(tokens.to(device), torch.tensor([len(d) for d in drafts], device=device))

    def select(self, rows: torch.Tensor) -> None:
        keep = rows.tolist()
        self.rows = [self.rows[i] for i in keep]
        if self.last_match_length is not None:
            self.last_match_length = self.last_match_length[rows.to(self.last_match_length.device)]

    def finish(self) -> None:
        self.rows, self.peers = [], []
