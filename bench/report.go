package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// WriteDir writes the report into dir: report.json (every figure and the
// settings), report.md (tables, with ratios to the first target) and
// latency-throughput.svg (TTFT p50 against output tokens/s per target).
func (r *Report) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench report: %w", err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench report: %w", err)
	}
	var md, svg strings.Builder
	r.Markdown(&md)
	r.SVG(&svg)
	for name, body := range map[string][]byte{"report.json": append(data, '\n'), "report.md": []byte(md.String()),
		"latency-throughput.svg": []byte(svg.String())} {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			return fmt.Errorf("bench report: %w", err)
		}
	}
	return nil
}

func (l Level) label() string {
	if l.Rate > 0 {
		return fmt.Sprintf("%g req/s", l.Rate)
	}
	return fmt.Sprintf("%d", l.Concurrency)
}

// Markdown writes the report's tables.
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "workload `%s`: %s\n\n", r.Workload, Workloads[r.Workload].Description)
	fmt.Fprintf(w, "%s, %s, %d CPUs\n\n", r.Date.Format("2006-01-02 15:04 UTC"), r.Host, r.CPUs)
	for _, t := range r.Targets {
		fmt.Fprintf(w, "### %s\n\n%s, model `%s`", t.Name, t.URL, t.Model)
		if t.Server != "" {
			fmt.Fprintf(w, ", server `%s`", t.Server)
		}
		fmt.Fprint(w, "\n\n| load | requests | failed | req/s | output tok/s | total tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p50 ms | E2E p50 s | goodput req/s | client CPU |\n")
		fmt.Fprint(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, l := range t.Levels {
			x := l.Result
			fmt.Fprintf(w, "| %s | %d | %d | %.2f | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %.0f%% |\n", l.label(),
				x.Requests, x.Failed, x.RequestsPS, x.OutputTPS, x.TotalTPS, 1000*x.TTFT.P50, 1000*x.TTFT.P99,
				1000*x.TPOT.P50, 1000*x.ITL.P50, x.E2E.P50, x.Goodput, 100*x.ClientCPU)
		}
		fmt.Fprintln(w)
		for _, l := range t.Levels {
			if len(l.Result.Errors) > 0 {
				fmt.Fprintf(w, "errors at %s: %v\n\n", l.label(), l.Result.Errors)
			}
		}
	}
	if len(r.Targets) < 2 {
		return
	}
	base := r.Targets[0]
	fmt.Fprintf(w, "### Ratios to %s\n\n| target | load | output tok/s | TTFT p50 | TTFT p99 | TPOT p50 |\n| --- | --- | ---: | ---: | ---: | ---: |\n", base.Name)
	for _, t := range r.Targets[1:] {
		for i, l := range t.Levels {
			if i >= len(base.Levels) {
				break
			}
			a, b := l.Result, base.Levels[i].Result
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", t.Name, l.label(), ratio(a.OutputTPS, b.OutputTPS),
				ratio(a.TTFT.P50, b.TTFT.P50), ratio(a.TTFT.P99, b.TTFT.P99), ratio(a.TPOT.P50, b.TPOT.P50))
		}
	}
	fmt.Fprintln(w)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// SVG draws TTFT p50 against output tokens/s, one line per target
// through its load levels.
func (r *Report) SVG(w io.Writer) {
	const W, H, left, bottom, top, right = 640, 400, 70, 50, 30, 150
	maxX, maxY := 0.0, 0.0
	for _, t := range r.Targets {
		for _, l := range t.Levels {
			maxX = math.Max(maxX, l.Result.OutputTPS)
			maxY = math.Max(maxY, 1000*l.Result.TTFT.P50)
		}
	}
	maxX, maxY = niceCeil(maxX), niceCeil(maxY)
	px := func(x float64) float64 { return left + x/maxX*(W-left-right) }
	py := func(y float64) float64 { return H - bottom - y/maxY*(H-top-bottom) }
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(w, `<text x="%d" y="18" font-size="14">%s: TTFT p50 against output throughput</text>`+"\n", left, html.EscapeString(r.Workload))
	fmt.Fprintf(w, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n",
		left, H-bottom, W-right, H-bottom, left, top, left, H-bottom)
	for i := 0; i <= 4; i++ {
		x, y := maxX*float64(i)/4, maxY*float64(i)/4
		fmt.Fprintf(w, `<text x="%.0f" y="%d" text-anchor="middle">%g</text>`+"\n", px(x), H-bottom+16, x)
		fmt.Fprintf(w, `<text x="%d" y="%.0f" text-anchor="end">%g</text>`+"\n", left-6, py(y)+4, y)
	}
	fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="middle">output tokens/s</text>`+"\n", (W-right+left)/2, H-12)
	fmt.Fprintf(w, `<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">TTFT p50 (ms)</text>`+"\n", (H-bottom+top)/2, (H-bottom+top)/2)
	colors := []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}
	for i, t := range r.Targets {
		c := colors[i%len(colors)]
		var pts []string
		levels := append([]Level(nil), t.Levels...)
		sort.SliceStable(levels, func(a, b int) bool { return levels[a].Result.OutputTPS < levels[b].Result.OutputTPS })
		for _, l := range levels {
			x, y := px(l.Result.OutputTPS), py(1000*l.Result.TTFT.P50)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			fmt.Fprintf(w, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %s: %.1f tok/s, TTFT p50 %.1f ms</title></circle>`+"\n",
				x, y, c, html.EscapeString(t.Name), l.label(), l.Result.OutputTPS, 1000*l.Result.TTFT.P50)
			fmt.Fprintf(w, `<text x="%.1f" y="%.1f" font-size="10" fill="%s">%s</text>`+"\n", x+4, y-4, c, html.EscapeString(l.label()))
		}
		fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		fmt.Fprintf(w, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", W-right+10, top+16*(i+1), c, html.EscapeString(t.Name))
	}
	fmt.Fprintln(w, "</svg>")
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}
