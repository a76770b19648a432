// The soak's report: joins what `load` saw (failed, slow and watch-stream ends, each
// with its start and end) with the fault log soak.sh kept, puts each in the fault
// window it overlapped, says for each cause whether the request could have succeeded,
// and writes bench/soak.md. The judgement rules are here, in one place (verdict).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

type fault struct {
	Kind       string
	Start, End int64
	Detail     string
}

// grace: effects of a fault are attributed to it this long after its action ended
// (a resumed watch's backoff, a connection found dead by a ping).
const grace = int64(5 * time.Second)

func readTSV(path string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	first := true
	for sc.Scan() {
		if first {
			first = false // header
			continue
		}
		if sc.Text() != "" {
			rows = append(rows, strings.Split(sc.Text(), "\t"))
		}
	}
	return rows, sc.Err()
}

func atoi(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }

func readFailures(path string) []failure {
	rows, _ := readTSV(path)
	var out []failure
	for _, r := range rows {
		for len(r) < 6 {
			r = append(r, "")
		}
		out = append(out, failure{Start: atoi(r[0]), End: atoi(r[1]), Kind: r[2], Method: r[3], Cause: r[4], Detail: r[5]})
	}
	return out
}

// window is the fault a request overlapped (its action, plus grace), or nil; of two
// (a fault's grace reaching into the next one), the later.
func window(faults []fault, start, end int64) *fault {
	var w *fault
	for i := range faults {
		f := &faults[i]
		if start <= f.End+grace && end >= f.Start && (w == nil || f.Start > w.Start) {
			w = f
		}
	}
	return w
}

// kindOf names a fault window's kind, "none" outside every window.
func kindOf(w *fault) string {
	if w == nil {
		return "none"
	}
	return w.Kind
}

// verdict says whether a failed request could have succeeded, and why.
func verdict(f failure, w *fault) (bool, string) {
	// Our DELETEs have no body: after a 401 the proxy sends any bodiless request again;
	// after a connection died under it, only GET (Go's rule, src/proxy.rs `idempotent`).
	bodiless := f.Method == "GET" || f.Method == "DELETE"
	replayable := f.Method == "GET"
	switch kindOf(w) {
	case "restart":
		// w.Start: the kill; w.End: the new server answers.
		if f.Start < w.End {
			return false, "in flight on the killed server, or sent while it was down"
		}
		return true, "sent after the restarted server was answering"
	case "freeze":
		if f.Start < w.End && !replayable {
			return false, "in flight on a frozen connection, and not a GET: it may have been processed, so it is not sent again"
		}
		if f.Start < w.End {
			return true, "a GET on a frozen connection: had the proxy found the connection dead (its HTTP/2 pool pings; nothing watches its HTTP/1.1 connections), it could have sent it again on a fresh one"
		}
		return true, "sent after the freeze ended"
	case "token":
		if f.Cause == "HTTP 401" && !bodiless {
			return false, "sent with the old token while it was being refused, and a request with a body is not replayed on 401"
		}
		if f.Cause == "HTTP 401" {
			return true, "a bodiless request refused with the old token is retried with the newer token on disk"
		}
		return true, "a token rotation must not fail anything but a 401"
	case "ca":
		return true, "the CA bundle held both CAs while the server's certificate changed"
	case "goaway":
		return true, "GOAWAY is graceful: requests above the last stream id are retried"
	}
	return true, "no fault at that time"
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	dir := fs.String("dir", ".", "the raw results (load's files, faults.tsv, meta.txt, metrics.txt)")
	out := fs.String("out", "bench/soak.md", "the report")
	fs.Parse(args)

	meta := map[string]string{}
	if b, err := os.ReadFile(filepath.Join(*dir, "meta.txt")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				meta[k] = v
			}
		}
	}
	t0 := atoi(meta["start_ns"])
	rel := func(ns int64) string { return fmt.Sprintf("%.1f", float64(ns-t0)/1e9) }

	frows, err := readTSV(filepath.Join(*dir, "faults.tsv"))
	if err != nil {
		return err
	}
	var faults []fault
	for _, r := range frows {
		for len(r) < 4 {
			r = append(r, "")
		}
		faults = append(faults, fault{Kind: r[0], Start: atoi(r[1]), End: atoi(r[2]), Detail: r[3]})
	}
	failures := readFailures(filepath.Join(*dir, "failures.tsv"))
	slow := readFailures(filepath.Join(*dir, "slow.tsv"))
	recon := readFailures(filepath.Join(*dir, "reconnects.tsv"))
	reqs, err := readTSV(filepath.Join(*dir, "requests.tsv"))
	if err != nil {
		return err
	}
	watches, err := readTSV(filepath.Join(*dir, "watches.tsv"))
	if err != nil {
		return err
	}
	rss, _ := readTSV(filepath.Join(*dir, "rss.tsv"))

	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }

	// Failures by (window, cause, kind), with the verdict.
	type key struct{ window, cause, kind, why string }
	type agg struct {
		n     int
		could bool
		first int64
	}
	groups := map[key]*agg{}
	var couldN, hadToN int
	for _, f := range failures {
		w := window(faults, f.Start, f.End)
		could, why := verdict(f, w)
		wk := kindOf(w)
		k := key{wk, f.Cause, f.Kind, why}
		if groups[k] == nil {
			groups[k] = &agg{could: could, first: f.Start}
		}
		groups[k].n++
		if could {
			couldN++
		} else {
			hadToN++
		}
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	// By count, then by the key, so that the same results always make the same report.
	sort.Slice(keys, func(i, j int) bool {
		a, b := groups[keys[i]].n, groups[keys[j]].n
		return a > b || a == b && fmt.Sprint(keys[i]) < fmt.Sprint(keys[j])
	})

	var sent, expected, received, dups, gaps, ooo, unasked, expired, lost, reconnects, openFails int64
	for _, r := range reqs {
		sent += atoi(r[1])
	}
	for _, w := range watches {
		expected += atoi(w[5])
		received += atoi(w[6])
		dups += atoi(w[7])
		gaps += atoi(w[8])
		ooo += atoi(w[9])
		unasked += atoi(w[11])
		expired += atoi(w[12])
		lost += atoi(w[13])
		reconnects += atoi(w[14])
		openFails += atoi(w[15])
	}

	p("# Soak: %s of mixed load and faults through kube-ambassador\n\n", meta["duration"])
	p("Generated by `bench/soak.sh` (see `bench/README.md`, \"Soak\"). Raw results: `%s`.\n\n", strings.TrimSuffix(*out, ".md")+"-raw/")
	if couldN == 0 {
		p("**Failed requests: %d of %d, none that could have succeeded** (", len(failures), sent)
		if hadToN == 0 {
			p("no failure at all")
		} else {
			p("all %d in flight on, or sent to, a server that was down or a connection that was frozen, with a body", hadToN)
		}
		p(").\n")
	} else {
		p("**FAILED REQUESTS THAT COULD HAVE SUCCEEDED: %d** (of %d failed, %d sent); the table below says which.\n", couldN, len(failures), sent)
	}
	p("**Watch events: %d expected, %d received, %d duplicated, %d missing inside a stream; %d watch streams ended under the client.**\n\n", expected, received, dups, gaps, reconnects)

	p("- date: %s; machine: %s\n", meta["date"], meta["machine"])
	p("- kube-ambassador: %s; flags: `%s`\n", meta["commit"], meta["flags"])
	p("- fake API server: tests/go-apiserver (Go %s net/http: TLS, ALPN h2, HTTP/2 from the standard library), %s\n", meta["go"], meta["fake"])
	p("- load: %s\n", meta["load"])
	p("- faults: %s\n\n", meta["faults"])

	p("## Requests\n\n| kind | sent | succeeded | failed | p50 | p99 | max |\n|---|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range reqs {
		p("| %s | %s | %s | %s | %s | %s | %s |\n", r[0], r[1], r[2], r[3], ms(r[4]), ms(r[5]), ms(r[6]))
	}
	p("\nLatencies are of the requests that succeeded; `watch-open` is the time to the watch's response headers (each watch is opened once, and again only if its stream ends under the client).\n\n")

	p("## Failed requests by cause\n\nA failure belongs to the fault whose window (the fault's action, plus %d s) it overlapped.\n\n", grace/1e9)
	if len(keys) == 0 {
		p("None.\n\n")
	} else {
		p("| fault window | cause | request | count | could have succeeded? | why |\n|---|---|---|--:|---|---|\n")
		for _, k := range keys {
			g := groups[k]
			yn := "no"
			if g.could {
				yn = "**yes**"
			}
			p("| %s | %s | %s | %d | %s | %s |\n", k.window, k.cause, k.kind, g.n, yn, k.why)
		}
		p("\nDetails (first of each cause; the proxy's Status message):\n\n")
		seen := map[string]bool{}
		for _, f := range failures {
			c := f.Kind + " " + f.Cause
			if seen[c] {
				continue
			}
			seen[c] = true
			w := window(faults, f.Start, f.End)
			wk := "no fault"
			if w != nil {
				wk = fmt.Sprintf("%s at %s s", w.Kind, rel(w.Start))
			}
			p("- %s, %s, at %s s (took %.2f s; %s): %s\n", f.Kind, f.Cause, rel(f.Start), float64(f.End-f.Start)/1e9, wk, f.Detail)
		}
		p("\n")
	}

	p("## Slow requests (succeeded after more than 1 s)\n\n")
	if len(slow) == 0 {
		p("None.\n\n")
	} else {
		cnt := map[string]int{}
		var worst int64
		for _, f := range slow {
			w := window(faults, f.Start, f.End)
			wk := kindOf(w)
			cnt[wk+"\t"+f.Kind]++
			worst = max(worst, f.End-f.Start)
		}
		p("| fault window | request | count |\n|---|---|--:|\n")
		for _, k := range sortedKeys(cnt) {
			a, c, _ := strings.Cut(k, "\t")
			p("| %s | %s | %d |\n", a, c, cnt[k])
		}
		p("\nThe slowest took %.1f s.\n\n", float64(worst)/1e9)
	}

	p("## Watches\n\n%d watches held for the whole run (half with `allowWatchBookmarks=true`), each from the position at its start. Expected: the events the fake's history holds for the watch's namespace from its start to 3 s before the end; received: distinct resourceVersions among them.\n\n", len(watches))
	p("| expected | received | duplicates | missing inside a stream | out of order | BOOKMARKs not asked for | 410 Expired | events lost to 410 | streams ended under the client | watch opens failed |\n|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	p("| %d | %d | %d | %d | %d | %d | %d | %d | %d | %d |\n\n", expected, received, dups, gaps, ooo, unasked, expired, lost, reconnects, openFails)
	if len(recon) > 0 {
		cnt := map[string]int{}
		for _, f := range recon {
			w := window(faults, f.End, f.End)
			wk := kindOf(w)
			cnt[wk+"\t"+f.Cause]++
		}
		p("Watch streams that ended under the client (it then watched again from its last resourceVersion), by the fault window of the end:\n\n| fault window | how | count |\n|---|---|--:|\n")
		for _, k := range sortedKeys(cnt) {
			a, c, _ := strings.Cut(k, "\t")
			p("| %s | %s | %d |\n", a, c, cnt[k])
		}
		p("\n")
	}

	p("## Faults\n\n")
	cnt := map[string]int{}
	for _, f := range faults {
		cnt[f.Kind]++
	}
	p("| fault | times | what |\n|---|--:|---|\n")
	for _, k := range []string{"token", "ca", "restart", "goaway", "freeze"} {
		p("| %s | %d | %s |\n", k, cnt[k], faultWhat[k])
	}
	p("\n<details><summary>Every fault (seconds from the start of the load)</summary>\n\n| start | end | fault | detail |\n|--:|--:|---|---|\n")
	for _, f := range faults {
		p("| %s | %s | %s | %s |\n", rel(f.Start), rel(f.End), f.Kind, f.Detail)
	}
	p("\n</details>\n\n")

	p("## Proxy memory over time\n\nSampled every 10 s from `/proc/PID/status`; upstream connections: ESTABLISHED sockets to the API server's port (`/proc/net/tcp`).\n\n")
	if len(rss) > 0 {
		var lo, hi, alo, ahi int64 = 1 << 62, 0, 1 << 62, 0
		for _, r := range rss {
			v, a := atoi(r[1]), atoi(r[2])
			lo, hi, alo, ahi = min(lo, v), max(hi, v), min(alo, a), max(ahi, a)
		}
		p("VmRSS %.1f–%.1f MiB, RssAnon %.1f–%.1f MiB over the run; the last sample: VmRSS %.1f MiB, RssAnon %.1f MiB.\n\n",
			mib(lo), mib(hi), mib(alo), mib(ahi), mib(atoi(rss[len(rss)-1][1])), mib(atoi(rss[len(rss)-1][2])))
		p("| t (s) | VmRSS (MiB) | RssAnon (MiB) | fds | upstream connections |\n|--:|--:|--:|--:|--:|\n")
		step := max(1, len(rss)/20)
		for i, r := range rss {
			if i%step == 0 || i == len(rss)-1 {
				p("| %s | %.1f | %.1f | %s | %s |\n", r[0], mib(atoi(r[1])), mib(atoi(r[2])), r[3], r[4])
			}
		}
		p("\n")
	}

	p("## The proxy's /metrics at the end\n\n")
	if m, err := os.ReadFile(filepath.Join(*dir, "metrics.txt")); err == nil {
		var lines []string
		for _, line := range strings.Split(string(m), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") &&
				(strings.Contains(line, "watch") || strings.Contains(line, "retr") || strings.Contains(line, "resume") ||
					strings.Contains(line, "upstream") || strings.Contains(line, "reload") || strings.Contains(line, "credential") ||
					strings.Contains(line, "requests_total")) {
				lines = append(lines, line)
			}
		}
		p("The lines about watches, resumes, retries, upstream connections, reloads and request totals:\n\n```\n%s\n```\n", strings.Join(lines, "\n"))
	} else {
		p("Not scraped: %v\n", err)
	}
	return os.WriteFile(*out, []byte(b.String()), 0o644)
}

var faultWhat = map[string]string{
	"token":   "the fake accepts old and new token; the new one is published the kubelet's way (`..data` swapped by rename); the fake refuses the old one at once",
	"ca":      "a new CA and server certificate: `ca.crt` becomes old+new CA, the fake reloads its certificate (new connections get the new one), then `ca.crt` becomes the new CA alone",
	"restart": "the fake is killed (SIGKILL) and, after a pause, started again on the same port with the same history",
	"goaway":  "for the fault's length, every HTTP/2 response of the fake gets `Connection: close` with probability 0.02 (kube-apiserver's --goaway-chance): Go's server sends GOAWAY",
	"freeze":  "every connection through the relay stops moving bytes (sockets open, the kernel still ACKs) until the proxy closes it, or until the limit; new connections work",
}

func ms(us string) string { return fmt.Sprintf("%.1f ms", float64(atoi(us))/1000) }

func mib(kib int64) float64 { return float64(kib) / 1024 }

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	return keys
}
