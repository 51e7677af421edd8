package engine

import (
	"slices"

	"github.com/finserve/finserve/prefixcache"
)

// A score task evaluates its variants over their prefix tree: every
// token shared by a group of variants is computed once, whatever its
// depth. Variants that differ in several places (Shapley coalitions of k
// features: 2^k variants, a binary tree of depth k) then cost about twice
// their leaves' tokens rather than every variant's whole suffix.
//
// A sequence walks the tree: it computes one node at a time and, when the
// node is done, goes on to one of its children in place (a take-over:
// no copy, no new slot) or, at a leaf, back up to the deepest ancestor
// with children not yet started (trimming its cells to that ancestor).
// Other children start in free slots from a copy of a sequence through
// their parent. A task therefore always progresses in one slot, and uses
// more when they are free.

// scoreNode is a node of the variants' prefix tree: tokens [start, end)
// of every variant in the task's sorted[lo:hi].
type scoreNode struct {
	parent     *scoreNode
	start, end int
	lo, hi     int
	rep        int // a variant holding the node's tokens
	variant    int // the variant ending here, or -1 for an inner node
	children   []*scoreNode
	started    int // children started so far
	refs       int // live sequences through the node
}

func (n *scoreNode) size() int { return n.end - n.start }

// pending says whether some of n's children have not started.
func (n *scoreNode) pending() bool { return n.started < len(n.children) }

// buildScoreTree returns the prefix tree of variants (sorted into order)
// under a root of the first rootLen tokens, which all of them share.
// Every variant ends in a leaf of its own with at least one token, so
// that its last logits come from its own cells.
func buildScoreTree(variants [][]Token, rootLen int) (*scoreNode, []int) {
	order := make([]int, len(variants))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return slices.Compare(variants[a], variants[b]) })
	root := &scoreNode{end: rootLen, hi: len(order), rep: order[0], variant: -1}
	root.children = splitScoreNodes(variants, order, 0, len(order), rootLen, root)
	return root, order
}

// splitScoreNodes builds the children of parent for order[lo:hi], which
// share their first d tokens and are all longer than d.
func splitScoreNodes(variants [][]Token, order []int, lo, hi, d int, parent *scoreNode) []*scoreNode {
	var nodes []*scoreNode
	for i := lo; i < hi; {
		// order[i:j] share token d (sorting makes them adjacent).
		tok := variants[order[i]][d]
		j := i + 1
		for j < hi && variants[order[j]][d] == tok {
			j++
		}
		// Variants that end at d (sorted first) are leaves of one token.
		for i < j && len(variants[order[i]]) == d+1 {
			nodes = append(nodes, &scoreNode{parent: parent, start: d, end: d + 1, lo: i, hi: i + 1, rep: order[i], variant: order[i]})
			i++
		}
		switch {
		case i == j:
		case j-i == 1:
			v := order[i]
			nodes = append(nodes, &scoreNode{parent: parent, start: d, end: len(variants[v]), lo: i, hi: j, rep: v, variant: v})
		default:
			// The first and last of a sorted run bound its common prefix;
			// keep a token for every variant's own leaf.
			first, last := variants[order[i]], variants[order[j-1]]
			c := d + 1
			for c < len(first) && c < len(last) && first[c] == last[c] {
				c++
			}
			for _, v := range order[i:j] {
				c = min(c, len(variants[v])-1)
			}
			n := &scoreNode{parent: parent, start: d, end: c, lo: i, hi: j, rep: order[i], variant: -1}
			n.children = splitScoreNodes(variants, order, i, j, c, n)
			nodes = append(nodes, n)
		}
		i = j
	}
	return nodes
}

// scoreTokens is the number of tokens a tree computes.
func (n *scoreNode) tokens() int {
	s := n.size()
	for _, c := range n.children {
		s += c.tokens()
	}
	return s
}

// ref counts a sequence entering node n (delta 1) or leaving it (-1),
// reserving n's cells while any sequence holds them.
func (l *loop) ref(t *scoreTask, n *scoreNode, delta int) {
	n.refs += delta
	switch {
	case delta > 0 && n.refs == 1:
		l.kvUsed += n.size()
		t.cells += n.size()
	case delta < 0 && n.refs == 0:
		l.kvUsed -= n.size()
		t.cells -= n.size()
	}
}

// unrefPath releases the nodes from n up to, not including, top.
func (l *loop) unrefPath(t *scoreTask, n, top *scoreNode) {
	for ; n != nil && n != top; n = n.parent {
		l.ref(t, n, -1)
	}
}

// deepestPending is the deepest node on the path from n up with children
// left to start (never the token-less root: its children start fresh).
func deepestPending(n *scoreNode) *scoreNode {
	for ; n != nil && n.end > 0; n = n.parent {
		if n.pending() {
			return n
		}
	}
	return nil
}

func (l *loop) admitScore(t *scoreTask) admission {
	if !l.freeSlot(l.prio(&t.taskBase), 1) {
		return noRoom
	}
	if t.root.end == 0 {
		t.admitted, t.waitSteps = l.now(), l.steps-t.arrival
		l.scoring = append(l.scoring, t)
		l.startNodes(t)
		return admitted
	}
	prefix := t.req.Variants[t.root.rep][:t.root.end]
	src, wait := l.findSource(prefix, &t.chain, t.tenant, t.cacheLimit(t.root.end), t.hit)
	if wait {
		l.pstats.waits++
		return later
	}
	// Room for the root and the deepest path below it, the most one
	// sequence can hold.
	if !l.room(t.root.end+t.longest, src) {
		return noRoom
	}
	t.admitted, t.waitSteps = l.now(), l.steps-t.arrival
	slot, fed := l.open(src)
	t.hit = nil
	t.result.CachedTokens = fed
	l.ref(t, t.root, 1)
	l.addSeq(&sequence{slot: slot, tokens: prefix, fed: fed, tier: t.tier, order: t.order, score: t, node: t.root,
		variant: -1, tenant: t.tenant, chain: t.chain})
	l.scoring = append(l.scoring, t)
	return admitted
}

// startNodes moves t's sequences that finished their node on to the next
// (or frees them), then starts children in free slots: copies for those
// whose parent is computed, fresh sequences for the root's children when
// the root has no tokens.
func (l *loop) startNodes(t *scoreTask) {
	var seqs []*sequence
	for _, sq := range l.running {
		if sq.score == t {
			seqs = append(seqs, sq)
		}
	}
	for _, sq := range seqs {
		if sq.remaining() > 0 {
			continue
		}
		p := deepestPending(sq.node)
		if p == nil {
			l.unrefPath(t, sq.node, nil)
			l.removeSeq(sq, true)
			continue
		}
		c := p.children[p.started]
		if !l.room(c.size(), source{}) {
			continue
		}
		if sq.fed > p.end {
			l.p.remove(sq.slot, p.end, -1)
		}
		l.unrefPath(t, sq.node, p)
		l.enter(t, sq, c)
	}
	for {
		src, p := l.copySource(t)
		if p == nil || !l.freeSlot(l.prio(&t.taskBase), 1) {
			break
		}
		c := p.children[p.started]
		if !l.room(c.size(), source{}) {
			break
		}
		slot := l.claimSlot()
		if l.split {
			// Streams copy whole; drop what lies past the parent.
			l.p.copySeq(src.slot, slot, -1, -1)
			l.p.remove(slot, p.end, -1)
		} else {
			l.p.copySeq(src.slot, slot, 0, p.end)
		}
		for a := p; a != nil && a.end > 0; a = a.parent {
			a.refs++ // already reserved: src holds them
		}
		sq := &sequence{slot: slot, tier: t.tier, order: t.order, score: t, tenant: t.tenant}
		l.enter(t, sq, c)
		l.addSeq(sq)
	}
	for t.root.end == 0 && t.root.pending() && l.freeSlot(l.prio(&t.taskBase), 1) {
		c := t.root.children[t.root.started]
		toks := t.req.Variants[c.rep][:c.end]
		sq := &sequence{tokens: toks, tier: t.tier, order: t.order, score: t, node: c, variant: c.variant, tenant: t.tenant}
		if l.pc.on {
			sq.chain = prefixcache.ChainOf(l.pc.block, toks)
		}
		src, _ := l.findSource(toks, &sq.chain, t.tenant, t.cacheLimit(len(toks)), nil)
		if !l.room(c.size(), src) {
			return
		}
		sq.slot, sq.fed = l.open(src)
		t.root.started++
		l.ref(t, c, 1)
		l.addSeq(sq)
	}
}

// enter points sq, whose cells hold c's parent, at node c.
func (l *loop) enter(t *scoreTask, sq *sequence, c *scoreNode) {
	sq.node, sq.variant = c, c.variant
	sq.tokens = t.req.Variants[c.rep][:c.end]
	sq.fed = c.start
	c.parent.started++
	l.ref(t, c, 1)
}

// copySource finds the shallowest computed node of t with children left
// to start, and a live sequence through it to copy its cells from. As in
// work stealing, a new sequence takes the biggest piece of work left
// (the subtree nearest the root), so that copies stay few: a split KV
// cache copies a whole stream each time. Sequences themselves walk depth
// first (deepestPending), keeping their cells.
func (l *loop) copySource(t *scoreTask) (*sequence, *scoreNode) {
	var src *sequence
	var best *scoreNode
	for _, sq := range l.running {
		if sq.score != t {
			continue
		}
		n := sq.node
		if sq.remaining() > 0 {
			n = n.parent // its own node is not computed yet
		}
		for ; n != nil && n.end > 0; n = n.parent {
			if n.pending() && (best == nil || n.end < best.end) {
				src, best = sq, n
			}
		}
	}
	return src, best
}
