package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Stat is one contender's medians over the rounds of a row.
type Stat struct {
	RPS, P50us, P99us float64
	// CPU µs per 200 answer of the contender's process and of the
	// upstream while it served the contender; -1 when unknown.
	CPUus, UpstreamCPUus float64
	NotOK                int64 // non-200 answers and errors, summed over rounds
}

// Row is one line of the table: a connection count and a mode.
type Row struct {
	Conns   int
	Mode    string
	Rounds  int
	Bare    Stat
	Keygate Stat
	// Medians over rounds of the per-round keygate/bare ratios and of
	// keygate p50 − bare p50.
	RPSRatio, P99Ratio, P50AddedUs float64
}

func summarize(runs []RunStat, opts Options) []Row {
	var rows []Row
	for _, conns := range opts.Conns {
		for _, mode := range opts.Modes {
			row := Row{Conns: conns, Mode: mode}
			var bare, kg []RunStat
			for _, r := range runs {
				if r.Conns != conns || r.Mode != mode {
					continue
				}
				if r.Contender == contenderBare {
					bare = append(bare, r)
				} else {
					kg = append(kg, r)
				}
			}
			if len(bare) == 0 || len(bare) != len(kg) {
				continue
			}
			row.Rounds = len(bare)
			row.Bare, row.Keygate = stat(bare), stat(kg)
			var rps, p99, p50 []float64
			for i := range bare {
				b, k := bare[i].Load, kg[i].Load
				if b.RPS > 0 {
					rps = append(rps, k.RPS/b.RPS)
				}
				if b.P99us > 0 {
					p99 = append(p99, k.P99us/b.P99us)
				}
				p50 = append(p50, k.P50us-b.P50us)
			}
			row.RPSRatio, row.P99Ratio, row.P50AddedUs = median(rps), median(p99), median(p50)
			rows = append(rows, row)
		}
	}
	return rows
}

func stat(runs []RunStat) Stat {
	var s Stat
	var rps, p50, p99, cpu, up []float64
	for _, r := range runs {
		rps = append(rps, r.Load.RPS)
		p50 = append(p50, r.Load.P50us)
		p99 = append(p99, r.Load.P99us)
		cpu = append(cpu, r.perReq(r.ServerCPU))
		up = append(up, r.perReq(r.UpstreamCPU))
		s.NotOK += r.Load.Requests - r.Load.ok()
	}
	s.RPS, s.P50us, s.P99us, s.CPUus, s.UpstreamCPUus = median(rps), median(p50), median(p99), median(cpu), median(up)
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func cpuCell(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f", v)
}

// Print writes the table, the one-connection overhead and the ledger check.
func (r *Result) Print(w io.Writer) {
	o := r.Options
	per := o.Duration.String()
	if o.Requests > 0 {
		per = fmt.Sprintf("%d requests", o.Requests)
	}
	fmt.Fprintf(w, "\nkeygate end to end vs a bare reverse proxy, same upstream, each in its own process\n")
	fmt.Fprintf(w, "%s per run after a %s warm-up, %d round(s) interleaved (bare, then keygate); medians over rounds.\n", per, o.Warmup, o.Rounds)
	fmt.Fprintf(w, "req/s and latency count 200 answers; cpu = µs of the server process's user+system CPU per 200 answer\n")
	fmt.Fprintf(w, "(keygate's includes its embedded etcd and usage ledger); up = the upstream's, while serving that contender.\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conns\tmode\t|\tbare req/s\tp50 µs\tp99 µs\tcpu µs/req\tup µs/req\t|\tkeygate req/s\tp50 µs\tp99 µs\tcpu µs/req\tup µs/req\t|\treq/s k/b\tp99 k/b\tp50 +µs\t")
	for _, row := range r.Rows {
		b, k := row.Bare, row.Keygate
		fmt.Fprintf(tw, "%d\t%s\t|\t%.0f\t%.0f\t%.0f\t%s\t%s\t|\t%.0f\t%.0f\t%.0f\t%s\t%s\t|\t%.2f\t%.2f\t%+.0f\t\n",
			row.Conns, row.Mode,
			b.RPS, b.P50us, b.P99us, cpuCell(b.CPUus), cpuCell(b.UpstreamCPUus),
			k.RPS, k.P50us, k.P99us, cpuCell(k.CPUus), cpuCell(k.UpstreamCPUus),
			row.RPSRatio, row.P99Ratio, row.P50AddedUs)
	}
	_ = tw.Flush()
	var one []string
	for _, row := range r.Rows {
		if row.Conns == 1 {
			one = append(one, fmt.Sprintf("%s %+.0f µs (bare %.0f µs, keygate %.0f µs)", row.Mode, row.P50AddedUs, row.Bare.P50us, row.Keygate.P50us))
		}
	}
	if len(one) > 0 {
		fmt.Fprintf(w, "\none-connection p50 overhead, keygate − bare, median of %d round(s): %s\n", o.Rounds, strings.Join(one, "; "))
	}
	for _, row := range r.Rows {
		if row.Bare.NotOK > 0 || row.Keygate.NotOK > 0 {
			fmt.Fprintf(w, "warning: conns=%d %s: answers other than 200 (or errors): bare %d, keygate %d (see the run lines)\n",
				row.Conns, row.Mode, row.Bare.NotOK, row.Keygate.NotOK)
		}
	}
	l := r.Ledger
	verdict := "OK"
	if !l.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "\nledger check: keygate answered 200 to %d requests (warm-ups and the readiness probe included); "+
		"the ledger counts %d for the key; missing %d, doubled %d: %s (after %.1fs)\n",
		l.Answered, l.Ledger, l.Missing, l.Doubled, verdict, l.Waited.Seconds())
	if len(l.Other) > 0 || l.Errors > 0 {
		fmt.Fprintf(w, "keygate's other answers: %v, transport errors %d (answers after forwarding, e.g. upstream errors, are in the ledger too)\n", l.Other, l.Errors)
	}
	if l.Note != "" {
		fmt.Fprintf(w, "ledger: %s\n", l.Note)
	}
	if r.Dir != "" {
		fmt.Fprintf(w, "data and logs kept in %s\n", r.Dir)
	}
}
