package engine

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
)

// fakeEmbedModel is the fake model as an embedding model of 8 dimensions.
func fakeEmbedModel() *Model {
	m := fakeModel()
	m.info.Pooling, m.info.Embedding = "mean", 8
	return m
}

// embedArrival is an embedding request of a table.
type embedArrival struct {
	name   string
	turn   int
	tier   Tier
	inputs []int // input lengths
	cancel int   // cancelled before this turn (0: never)
}

// inputsOf makes inputs of the given lengths, distinct per request.
func inputsOf(seed int, lens []int) [][]Token {
	in := make([][]Token, len(lens))
	for i, n := range lens {
		in[i] = prompt(seed*100+i, n)
	}
	return in
}

// embedAlone is the fake model's embedding of one input computed alone.
func embedAlone(t *testing.T, in []Token) []float32 {
	t.Helper()
	s := newSimOf(t, fakeEmbedModel(), Options{Parallel: 1, Context: 128, Batch: 128}, nil)
	task, err := s.e.submitEmbed(context.Background(), EmbedRequest{Inputs: [][]Token{in}})
	if err != nil {
		t.Fatal(err)
	}
	s.runUntil(5, func() bool { return isDone(task.done) })
	if task.err != nil {
		t.Fatal(task.err)
	}
	return task.result.Embeddings[0]
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestSchedEmbed: embedding inputs are packed whole into steps (the fake
// executor fails a sequence split over two decodes, or with a row that
// is no output), each equals the input computed alone and is a unit
// vector, higher tiers pass a request's rest, and cancelled requests
// leave nothing behind.
func TestSchedEmbed(t *testing.T) {
	cases := []struct {
		name     string
		o        Options
		arrivals []embedArrival
		rows     []int          // rows of each step
		steps    map[string]int // the step in which each request ended (1-based)
		err      map[string]error
	}{
		{
			name:     "inputs packed whole within the batch",
			o:        Options{Parallel: 4, Context: 32, Batch: 32},
			arrivals: []embedArrival{{name: "a", inputs: []int{10, 12, 9, 20, 5, 30}}},
			// 10+12+9 (20 does not fit: it goes first next), 20+5, 30
			rows:  []int{31, 25, 30},
			steps: map[string]int{"a": 3},
		},
		{
			name: "requests share steps",
			o:    Options{Parallel: 8, Context: 64, Batch: 64},
			arrivals: []embedArrival{
				{name: "a", inputs: []int{8, 8, 8}},
				{name: "b", inputs: []int{16, 16}},
			},
			rows:  []int{56},
			steps: map[string]int{"a": 1, "b": 1},
		},
		{
			name: "realtime passes the rest of a batch request",
			o:    Options{Parallel: 2, Context: 64, Batch: 64},
			arrivals: []embedArrival{
				{name: "bulk", tier: TierBatch, inputs: []int{10, 10, 10, 10, 10, 10}},
				{name: "rt", turn: 1, tier: TierRealtime, inputs: []int{7}},
			},
			// bulk 2 inputs; rt and one of bulk; then bulk's last 3 in pairs
			rows:  []int{20, 17, 20, 10},
			steps: map[string]int{"rt": 2, "bulk": 4},
		},
		{
			name: "cancelled with inputs left",
			o:    Options{Parallel: 2, Context: 64, Batch: 64},
			arrivals: []embedArrival{
				{name: "a", inputs: []int{10, 10, 10, 10, 10, 10}, cancel: 1},
				{name: "b", inputs: []int{5}},
			},
			rows:  []int{20, 5},
			steps: map[string]int{"b": 2},
			err:   map[string]error{"a": context.Canceled},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSimOf(t, fakeEmbedModel(), c.o, nil)
			tasks := map[string]*embedTask{}
			cancels := map[string]context.CancelFunc{}
			ended := map[string]int{}
			for turn := 0; len(ended) < len(c.arrivals); turn++ {
				if turn == 20 {
					t.Fatalf("not done after %d turns", turn)
				}
				for i, a := range c.arrivals {
					if a.turn == turn {
						ctx, cancel := context.WithCancel(context.Background())
						task, err := s.e.submitEmbed(ctx, EmbedRequest{ID: a.name, Tier: a.tier, Inputs: inputsOf(i+1, a.inputs)})
						if err != nil {
							t.Fatal(err)
						}
						tasks[a.name], cancels[a.name] = task, cancel
					}
					if a.cancel == turn && a.cancel > 0 {
						cancels[a.name]()
					}
				}
				s.turn()
				for name, task := range tasks {
					if _, ok := ended[name]; !ok && isDone(task.done) {
						ended[name] = len(s.x.steps)
					}
				}
			}
			var rows []int
			for _, st := range s.x.steps {
				rows = append(rows, st.rows)
			}
			if !slices.Equal(rows, c.rows) {
				t.Errorf("rows per step %v, want %v", rows, c.rows)
			}
			for i, a := range c.arrivals {
				task := tasks[a.name]
				if want := c.err[a.name]; want != nil {
					if !errors.Is(task.err, want) {
						t.Errorf("%s: err %v, want %v", a.name, task.err, want)
					}
					continue
				}
				if task.err != nil {
					t.Fatalf("%s: %v", a.name, task.err)
				}
				if got := ended[a.name]; got != c.steps[a.name] {
					t.Errorf("%s ended in step %d, want %d", a.name, got, c.steps[a.name])
				}
				tokens := 0
				for j, in := range inputsOf(i+1, a.inputs) {
					got, want := task.result.Embeddings[j], embedAlone(t, in)
					if !slices.Equal(got, want) {
						t.Errorf("%s input %d: %v, alone %v", a.name, j, got, want)
					}
					var ss float64
					for _, x := range got {
						ss += float64(x) * float64(x)
					}
					if math.Abs(ss-1) > 1e-6 {
						t.Errorf("%s input %d: squared norm %v", a.name, j, ss)
					}
					tokens += len(in)
				}
				if task.result.Tokens != tokens {
					t.Errorf("%s: %d tokens, want %d", a.name, task.result.Tokens, tokens)
				}
			}
			s.checkIdle()
		})
	}
}

// TestEmbedRefusals: what an embedding request may not be, and the
// generation APIs on an embedding model, before anything is queued.
func TestEmbedRefusals(t *testing.T) {
	s := newSimOf(t, fakeEmbedModel(), Options{Parallel: 2, Context: 64, Batch: 32}, nil)
	long := &PromptTooLongError{}
	inv := &InvalidRequestError{}
	for _, c := range []struct {
		name string
		req  EmbedRequest
		want any
	}{
		{"no input", EmbedRequest{}, &inv},
		{"an empty input", EmbedRequest{Inputs: [][]Token{{11}, {}}}, &inv},
		{"longer than the batch", EmbedRequest{Inputs: [][]Token{{11}, prompt(1, 33)}}, &long},
		{"a token outside the vocabulary", EmbedRequest{Inputs: [][]Token{{11, simVocab}}}, &inv},
		{"too many inputs", EmbedRequest{Inputs: make([][]Token, MaxEmbedInputs+1)}, &inv},
		{"an unknown tier", EmbedRequest{Inputs: [][]Token{{11}}, Tier: 9}, &inv},
	} {
		_, err := s.e.submitEmbed(context.Background(), c.req)
		if err == nil || !errors.As(err, c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if long.Input != 1 || long.Limit != 32 || long.Tokens != 33 {
		t.Errorf("too long: %+v", long)
	}
	if _, err := s.e.Generate(context.Background(), Request{Prompt: []Token{11}}); !errors.Is(err, ErrEmbeddingOnly) {
		t.Errorf("Generate on an embedding model: %v", err)
	}
	if _, err := s.e.Score(context.Background(), ScoreRequest{Variants: [][]Token{{11, 12}}}); !errors.Is(err, ErrEmbeddingOnly) {
		t.Errorf("Score on an embedding model: %v", err)
	}
	g := newSim(t, Options{Parallel: 1, Context: 64}, nil)
	if _, err := g.e.submitEmbed(context.Background(), EmbedRequest{Inputs: [][]Token{{11}}}); !errors.Is(err, ErrNotEmbedding) {
		t.Errorf("Embed on a generation model: %v", err)
	}
	if len(s.l.waiting)+len(s.e.incoming) != 0 {
		t.Errorf("refused requests were queued")
	}
}
