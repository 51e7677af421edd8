package aml

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
)

// Attribution methods.
const (
	MethodExact       = "exact_shapley"
	MethodPermutation = "permutation"
)

// DefaultSamples is the number of permutations sampled by default.
const DefaultSamples = 64

// exactShapley returns the Shapley values of k players from v, the value
// of every coalition indexed by its bit mask (len 2^k):
// phi_i = sum over S without i of |S|!(k-|S|-1)!/k! (v(S+i) - v(S)).
func exactShapley(k int, v []float64) []float64 {
	w := make([]float64, k) // weight of a coalition of size s
	for s := range k {
		w[s] = math.Exp(lgamma(s+1) + lgamma(k-s) - lgamma(k+1))
	}
	phi := make([]float64, k)
	for i := range k {
		bit := uint64(1) << i
		for S := uint64(0); S < uint64(len(v)); S++ {
			if S&bit == 0 {
				phi[i] += w[bits.OnesCount64(S)] * (v[S|bit] - v[S])
			}
		}
	}
	return phi
}

func lgamma(n int) float64 {
	r, _ := math.Lgamma(float64(n))
	return r
}

// permutationPlan samples orderings of k players with a seeded generator
// and returns them with the coalitions their walks visit (deduplicated,
// the empty and full coalitions included).
func permutationPlan(k, samples int, seed uint64) ([][]int, []uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed_f1a5e_77))
	perms := make([][]int, samples)
	seen := map[uint64]bool{0: true}
	masks := []uint64{0}
	for p := range perms {
		perms[p] = rng.Perm(k)
		var S uint64
		for _, i := range perms[p] {
			S |= 1 << i
			if !seen[S] {
				seen[S] = true
				masks = append(masks, S)
			}
		}
	}
	slices.Sort(masks)
	return perms, masks
}

// permutationShapley averages each player's marginal contribution over
// the sampled orderings. Each ordering's contributions telescope to
// v(all) - v(none), so the estimates satisfy efficiency exactly (up to
// float addition). It also returns each estimate's standard error.
func permutationShapley(k int, perms [][]int, v map[uint64]float64) (phi, stderr []float64) {
	phi = make([]float64, k)
	sq := make([]float64, k)
	for _, perm := range perms {
		var S uint64
		for _, i := range perm {
			next := S | 1<<i
			d := v[next] - v[S]
			phi[i] += d
			sq[i] += d * d
			S = next
		}
	}
	n := float64(len(perms))
	stderr = make([]float64, k)
	for i := range phi {
		mean := phi[i] / n
		phi[i] = mean
		if len(perms) > 1 {
			variance := (sq[i]/n - mean*mean) * n / (n - 1)
			stderr[i] = math.Sqrt(math.Max(variance, 0) / n)
		}
	}
	return phi, stderr
}
