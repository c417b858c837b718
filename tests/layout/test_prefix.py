"""Shared prefixes read from page tables (infernb.layout.prefix, issue 15): a tree of forks gives its levels, rows,
pages and each row's own part; short runs, explicit groups, caps and partly filled pages."""
import pytest
import torch

import infernb as ib
from infernb import InputError
from infernb.layout.prefix import prefix_tree


def forked(gen, page_size=16):
    """root (100 tokens) forked 3 times (+40 each), the first child forked twice (+37 each): rows root, c0, c1, c2,
    g0, g1."""
    r = lambda n: torch.randn(n, 2, 8, generator=gen).bfloat16()  # noqa: E731
    c = ib.PagedKVCache(200, page_size, 2, 8, dtype=torch.bfloat16)
    (root,) = c.add_sequences(1)
    c.append([root], r(100), r(100), [100])
    kids = [c.fork(root) for _ in range(3)]
    for s in kids:
        c.append([s], r(40), r(40), [40])
    grand = [c.fork(kids[0]) for _ in range(2)]
    for s in grand:
        c.append([s], r(37), r(37), [37])
    return c, [root] + kids + grand


def test_a_tree_of_forks(gen):
    c, ids = forked(gen)
    t = prefix_tree(c.page_table(ids))
    # level 0: the root's 6 full pages (its 7th holds 4 tokens: copied by each fork), shared by all six rows;
    # level 1: the first child's next 2 full pages (140 tokens = 8 full pages + 12), shared with its two forks
    assert [(lv.rows, lv.first_page, len(lv.pages), lv.parent, lv.depth) for lv in t.levels] == \
        [((0, 1, 2, 3, 4, 5), 0, 6, None, 0), ((1, 4, 5), 6, 2, 0, 1)]
    assert t.levels[0].pages == tuple(c.page_table([ids[0]]).pages_of(0)[:6])
    assert t.levels[1].start == 96 and t.levels[1].tokens == 32
    assert t.unique_first_page == (6, 8, 6, 6, 8, 8) and t.path == ((0,), (0, 1), (0,), (0,), (0, 1), (0, 1))
    assert t.unique_tokens(0) == 4 and t.unique_tokens(4) == 177 - 128
    s = t.stats()
    assert s["plain_tokens"] == 100 + 3 * 140 + 2 * 177 and s["depth"] == 2
    assert s["cascade_tokens"] == 96 + 32 + sum(t.unique_tokens(b) for b in range(6))


def test_short_runs_caps_groups_and_no_sharing(gen):
    c, ids = forked(gen)
    table = c.page_table(ids)
    # a level must have 7 pages: the root's 6 do not make one; the first child and its forks share 8 from the start
    t = prefix_tree(table, min_pages=7)
    assert [(lv.rows, lv.first_page, len(lv.pages)) for lv in t.levels] == [((1, 4, 5), 0, 8)]
    assert t.unique_first_page == (0, 8, 0, 0, 8, 8)
    # caps: row 4 may share its first 3 pages only (its new tokens start there): the root's run splits at page 3
    # into a level all six share and one the other five share, then the first child's 2 pages with row 5 only
    t = prefix_tree(table, max_pages=[6, 8, 6, 6, 3, 8])
    assert [(lv.rows, lv.first_page, len(lv.pages), lv.parent, lv.depth) for lv in t.levels] == \
        [((0, 1, 2, 3, 4, 5), 0, 3, None, 0), ((0, 1, 2, 3, 5), 3, 3, 0, 1), ((1, 5), 6, 2, 1, 2)]
    assert t.unique_first_page == (6, 8, 6, 6, 3, 8) and t.path[4] == (0,) and t.path[5] == (0, 1, 2)
    t = prefix_tree(table, groups=[[1, 4, 5], [2]])
    assert [(lv.rows, lv.first_page, len(lv.pages)) for lv in t.levels] == [((1, 4, 5), 0, 8)]
    assert prefix_tree(table, groups=[[0, 2]]).levels[0].pages == t.levels[0].pages[:6]
    # separate sequences share nothing
    c2 = ib.PagedKVCache(20, 16, 2, 8, dtype=torch.bfloat16)
    a, b = c2.add_sequences(2)
    kv = torch.randn(64, 2, 8, generator=gen).bfloat16()
    c2.append([a], kv, kv, [64])
    c2.append([b], kv, kv, [64])
    t = prefix_tree(c2.page_table([a, b]))
    assert t.levels == () and t.unique_first_page == (0, 0) and t.stats()["read_ratio"] == 1.0
    with pytest.raises(InputError, match="groups"):
        prefix_tree(table, groups=[[0, 1], [1, 2]])
    with pytest.raises(InputError, match="max_pages"):
        prefix_tree(table, max_pages=[1])
    with pytest.raises(InputError, match="PageTable"):
        prefix_tree(ids)


def test_prefix_levels_picture(gen):
    c, ids = forked(gen)
    t = prefix_tree(c.page_table(ids))
    fig = ib.viz.prefix_levels(t, labels=[f"seq {s}" for s in ids])
    assert [list(d.y) for d in fig.data] == [[f"seq {s}" for s in ids], [f"seq {ids[b]}" for b in (1, 4, 5)],
                                            [f"seq {s}" for s in ids]]
    # the levels' bars at their key ranges, the own keys from each row's first unique page to its end
    assert list(fig.data[1].base) == [96] * 3 and list(fig.data[1].x) == [32] * 3
    assert list(fig.data[2].base) == [96, 128, 96, 96, 128, 128] and list(fig.data[2].x) == [4, 12, 44, 44, 49, 49]
