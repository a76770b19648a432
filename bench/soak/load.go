// The soak's load: small GETs, 500-pod LISTs, a trickle of POST/PATCH/DELETE and held
// watches, all through the proxy, for a fixed time. Every failed request is written
// down with its start and end (report.go puts it in the fault window it overlapped);
// each watch checks its stream against the fake's event history (tests/go-apiserver/
// soak.go: event n at epoch+n*period in namespace soak-<n mod K>, resourceVersion
// rvBase+n), so the events it should have seen are known without asking the server.
// The proxy's memory, descriptors and upstream connections are sampled on the way.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type loadConfig struct {
	proxy                  string
	seconds                float64
	watches, namespaces    int
	epoch                  int64
	period                 time.Duration
	rvBase                 int64
	getWorkers, listWorker int
	getEvery, listEvery    time.Duration
	writeEvery             time.Duration
	pods                   int
	pid, relayPort         int
	out                    string
}

// kindStats counts one kind of request; latencies in µs, for percentiles at the end.
type kindStats struct {
	mu        sync.Mutex
	sent, ok  int64
	latencies []int64
}

type failure struct {
	Start, End int64 // Unix ns
	Kind       string
	Method     string
	Cause      string
	Detail     string
}

type loader struct {
	cfg      loadConfig
	client   *http.Client // short requests: kept-alive HTTP/1.1 connections to the proxy
	watchCli *http.Client // watches: one connection each, no deadline
	stop     chan struct{}
	kinds    map[string]*kindStats
	mu       sync.Mutex
	failures []failure
	slow     []failure // succeeded, but took over a second
	recon    []failure // watch streams that ended under the client (Kind: watch id)
}

func load(args []string) error {
	var c loadConfig
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	fs.StringVar(&c.proxy, "proxy", "", "the proxy's URL, http://127.0.0.1:PORT")
	fs.Float64Var(&c.seconds, "seconds", 600, "how long")
	fs.IntVar(&c.watches, "watches", 200, "held watches")
	fs.IntVar(&c.namespaces, "namespaces", 50, "the fake's -events-namespaces")
	fs.Int64Var(&c.epoch, "epoch", 0, "the fake's -events-epoch")
	fs.DurationVar(&c.period, "period", 0, "the fake's -events-period")
	fs.Int64Var(&c.rvBase, "rv-base", 100000, "the fake's -rv-base")
	fs.IntVar(&c.getWorkers, "get-workers", 4, "GET loops")
	fs.DurationVar(&c.getEvery, "get-every", 20*time.Millisecond, "pause between one GET loop's requests")
	fs.IntVar(&c.listWorker, "list-workers", 1, "LIST loops")
	fs.DurationVar(&c.listEvery, "list-every", 200*time.Millisecond, "pause between one LIST loop's requests")
	fs.DurationVar(&c.writeEvery, "write-every", 300*time.Millisecond, "pause between writes (POST, PATCH, DELETE in turn)")
	fs.IntVar(&c.pods, "pods", 500, "pods in the fake's LIST")
	fs.IntVar(&c.pid, "pid", 0, "the proxy's pid (memory samples)")
	fs.IntVar(&c.relayPort, "relay-port", 0, "the port the proxy connects to upstream (connection count)")
	fs.StringVar(&c.out, "out", ".", "directory for the raw results")
	fs.Parse(args)
	if c.proxy == "" || c.period <= 0 || c.epoch == 0 {
		return errors.New("-proxy, -period and -epoch are required")
	}
	l := &loader{
		cfg: c,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, DisableCompression: true,
		}},
		watchCli: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1, DisableCompression: true}},
		stop:     make(chan struct{}),
		kinds:    map[string]*kindStats{},
	}
	for _, k := range []string{"get", "list", "post", "patch", "delete", "watch-open"} {
		l.kinds[k] = &kindStats{}
	}
	start := time.Now()
	var wg sync.WaitGroup
	loop := func(every time.Duration, f func(i int)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-time.After(every):
				}
				f(i)
			}
		}()
	}
	for w := 0; w < c.getWorkers; w++ {
		loop(c.getEvery, func(i int) {
			n := (i*c.getWorkers + w) % c.pods
			l.do("get", "GET", fmt.Sprintf("/api/v1/namespaces/default/pods/pod-%d", n), "", func(b []byte) bool {
				return bytes.Contains(b, []byte(fmt.Sprintf(`"name":"pod-%d"`, n)))
			})
		})
	}
	for w := 0; w < c.listWorker; w++ {
		loop(c.listEvery, func(int) {
			l.do("list", "GET", "/api/v1/namespaces/default/pods", "", func(b []byte) bool {
				return bytes.Count(b, []byte(`"kind":"Pod"`)) == c.pods
			})
		})
	}
	loop(c.writeEvery, func(i int) {
		name := fmt.Sprintf("w-%d", i/3)
		path := "/api/v1/namespaces/soak-writes/pods"
		ok := func(b []byte) bool { return bytes.Contains(b, []byte(`"name":"`+name+`"`)) }
		switch i % 3 {
		case 0:
			l.do("post", "POST", path, `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"`+name+`"}}`, ok)
		case 1:
			l.do("patch", "PATCH", path+"/"+name, `{"metadata":{"labels":{"soak":"yes"}}}`, ok)
		case 2:
			l.do("delete", "DELETE", path+"/"+name, "", ok)
		}
	})

	watches := make([]*watchState, c.watches)
	for i := range watches {
		watches[i] = &watchState{id: i, ns: i % c.namespaces, bookmarks: i%2 == 0, seen: map[int64]bool{}}
		watches[i].start = l.nowEvent()
		watches[i].last = watches[i].start
		wg.Add(1)
		go func(w *watchState) { defer wg.Done(); l.watch(w) }(watches[i])
		time.Sleep(5 * time.Millisecond) // not all in the same millisecond
	}

	samples := l.sample(start)
	time.Sleep(time.Until(start.Add(time.Duration(c.seconds * float64(time.Second)))))
	stopAt := time.Now()
	close(l.stop)
	wg.Wait()
	s := <-samples

	// Events are counted up to 3 s before the end: later ones may still be on their way.
	final := (stopAt.Add(-3*time.Second).UnixNano() - c.epoch) / int64(c.period)
	return l.write(watches, final, s, stopAt.Sub(start))
}

func (l *loader) nowEvent() int64 {
	return (time.Now().UnixNano() - l.cfg.epoch) / int64(l.cfg.period)
}

func (l *loader) do(kind, method, path, body string, check func([]byte) bool) {
	ks := l.kinds[kind]
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, l.cfg.proxy+path, rd)
	if method == "PATCH" {
		req.Header.Set("Content-Type", "application/merge-patch+json")
	} else if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	t0 := time.Now()
	resp, err := l.client.Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	t1 := time.Now()
	f := failure{Start: t0.UnixNano(), End: t1.UnixNano(), Kind: kind, Method: method}
	switch {
	case err != nil:
		f.Cause, f.Detail = errClass(err), err.Error()
	case resp.StatusCode/100 != 2:
		f.Cause, f.Detail = fmt.Sprintf("HTTP %d", resp.StatusCode), statusMessage(b)
	case !check(b):
		f.Cause, f.Detail = "wrong body", fmt.Sprintf("%d bytes", len(b))
	}
	ks.mu.Lock()
	ks.sent++
	if f.Cause == "" {
		ks.ok++
		ks.latencies = append(ks.latencies, t1.Sub(t0).Microseconds())
	}
	ks.mu.Unlock()
	if f.Cause != "" || t1.Sub(t0) > time.Second {
		l.mu.Lock()
		if f.Cause != "" {
			l.failures = append(l.failures, f)
		} else {
			f.Cause = "slow"
			l.slow = append(l.slow, f)
		}
		l.mu.Unlock()
	}
}

func errClass(err error) string {
	var ne net.Error
	s := err.Error()
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "client timeout (30 s)"
	case strings.Contains(s, "connection reset"):
		return "connection reset"
	case strings.Contains(s, "connection refused"):
		return "connection refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), strings.Contains(s, "EOF"):
		return "connection closed (EOF)"
	}
	return "connection error"
}

// statusMessage is the message of a Kubernetes Status body, never the whole body.
func statusMessage(b []byte) string {
	var st struct{ Message, Reason string }
	if json.Unmarshal(b, &st) == nil && (st.Message != "" || st.Reason != "") {
		return strings.TrimSpace(st.Reason + ": " + st.Message)
	}
	if len(b) > 120 {
		b = b[:120]
	}
	return string(b)
}

type watchState struct {
	id, ns    int
	bookmarks bool
	// start: the position the watch began at; last: the last resourceVersion (event
	// number) its streams delivered, events or bookmarks.
	start, last int64
	seen        map[int64]bool
	dups        int64
	gaps        int64 // events missing between two consecutive events of one stream
	outOfOrder  int64
	unasked     int64 // BOOKMARKs on a watch that did not ask for them
	bookmarksN  int64
	expired     int64 // 410 ERROR events (the client then starts again from now)
	lost        int64 // events skipped by those restarts
	reconnects  int64
	openFails   int64
}

type event struct {
	Type   string
	Object struct {
		Metadata struct{ ResourceVersion string }
		Code     int
	}
}

// watch holds one watch for the whole run, as a reflector would: when a stream ends
// under it, it counts a reconnect and watches again from the last position it saw.
func (l *loader) watch(w *watchState) {
	k := int64(l.cfg.namespaces)
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		q := fmt.Sprintf("/api/v1/namespaces/soak-%d/pods?watch=1&resourceVersion=%d", w.ns, l.cfg.rvBase+w.last)
		if w.bookmarks {
			q += "&allowWatchBookmarks=true"
		}
		req, _ := http.NewRequest("GET", l.cfg.proxy+q, nil)
		ctx, cancel := contextUntil(l.stop)
		req = req.WithContext(ctx)
		t0 := time.Now()
		resp, err := l.watchCli.Do(req)
		ks := l.kinds["watch-open"]
		ks.mu.Lock()
		ks.sent++
		if err == nil && resp.StatusCode == 200 {
			ks.ok++
			ks.latencies = append(ks.latencies, time.Since(t0).Microseconds())
		}
		ks.mu.Unlock()
		if err != nil || resp.StatusCode != 200 {
			cancel()
			if l.stopped() {
				return
			}
			f := failure{Start: t0.UnixNano(), End: time.Now().UnixNano(), Kind: "watch-open", Method: "GET"}
			if err != nil {
				f.Cause, f.Detail = errClass(err), err.Error()
			} else {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				f.Cause, f.Detail = fmt.Sprintf("HTTP %d", resp.StatusCode), statusMessage(b)
			}
			w.openFails++
			l.mu.Lock()
			l.failures = append(l.failures, f)
			l.mu.Unlock()
			time.Sleep(time.Second)
			continue
		}
		rd := bufio.NewReaderSize(resp.Body, 16<<10)
		var streamErr error
		expiredHere := false
		for {
			line, err := rd.ReadBytes('\n')
			if len(bytes.TrimSpace(line)) > 0 {
				var ev event
				if json.Unmarshal(line, &ev) != nil {
					streamErr = fmt.Errorf("bad event line %q", line)
					break
				}
				if ev.Type == "ERROR" {
					expiredHere = true
					w.expired++
					now := l.nowEvent()
					w.lost += countNS(w.last, now, int64(w.ns), k)
					w.last = now
					continue
				}
				n, _ := strconv.ParseInt(ev.Object.Metadata.ResourceVersion, 10, 64)
				n -= l.cfg.rvBase
				if ev.Type == "BOOKMARK" {
					w.bookmarksN++
					if !w.bookmarks {
						w.unasked++
					}
					w.last = max(w.last, n)
					continue
				}
				switch {
				case w.seen[n]:
					w.dups++
				case n <= w.last:
					w.outOfOrder++
				default:
					// The events of this namespace between the last position (event or
					// bookmark) and this one should have come first.
					w.gaps += countNS(w.last, n-1, int64(w.ns), k)
				}
				w.seen[n] = true
				w.last = max(w.last, n)
			}
			if err != nil {
				streamErr = err
				break
			}
		}
		resp.Body.Close()
		cancel()
		if l.stopped() {
			return
		}
		cause := "stream ended (EOF)"
		switch {
		case expiredHere:
			cause = "410 Expired: watch again from now (a relist)"
		case streamErr != io.EOF:
			cause = "stream error: " + errClass(streamErr)
		}
		if !expiredHere {
			w.reconnects++
		}
		l.mu.Lock()
		l.recon = append(l.recon, failure{Start: t0.UnixNano(), End: time.Now().UnixNano(), Kind: strconv.Itoa(w.id), Cause: cause, Detail: fmt.Sprint(streamErr)})
		l.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

// countNS counts the events of namespace ns in (from, to]: event m is in ns = m mod k.
func countNS(from, to, ns, k int64) int64 {
	upTo := func(n int64) int64 { // events m in [1, n] with m mod k == ns
		first := ns
		if first == 0 {
			first = k
		}
		if n < first {
			return 0
		}
		return (n-first)/k + 1
	}
	if to <= from {
		return 0
	}
	return upTo(to) - upTo(max(from, 0))
}

// contextUntil is a context that ends when stop is closed (or when cancel is called).
func contextUntil(stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (l *loader) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

type sampleSet struct{ rows []string }

// sample reads the proxy's memory, descriptors and upstream connections every 10 s.
func (l *loader) sample(start time.Time) <-chan sampleSet {
	out := make(chan sampleSet, 1)
	go func() {
		var s sampleSet
		take := func() {
			rss, anon := procStatus(l.cfg.pid)
			fds := -1
			if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", l.cfg.pid)); err == nil {
				fds = len(ents)
			}
			s.rows = append(s.rows, fmt.Sprintf("%.0f\t%d\t%d\t%d\t%d", time.Since(start).Seconds(), rss, anon, fds, established(l.cfg.relayPort)))
		}
		take()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				take()
				out <- s
				return
			case <-t.C:
				take()
			}
		}
	}()
	return out
}

func procStatus(pid int) (rss, anon int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) >= 2 && f[0] == "RssAnon:" {
			anon, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, anon
}

// established counts ESTABLISHED TCP connections to 127.0.0.1:port (the proxy's side
// of its upstream connections) in /proc/net/tcp.
func established(port int) int {
	if port == 0 {
		return -1
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return -1
	}
	want := fmt.Sprintf(":%04X", port)
	n := 0
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[2], want) && f[3] == "01" {
			n++
		}
	}
	return n
}

func percentile(v []int64, p float64) int64 {
	if len(v) == 0 {
		return 0
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v[min(len(v)-1, int(p*float64(len(v))))]
}

func (l *loader) write(watches []*watchState, final int64, s sampleSet, took time.Duration) error {
	dir := l.cfg.out
	k := int64(l.cfg.namespaces)
	var b strings.Builder
	fmt.Fprintf(&b, "kind\tsent\tok\tfailed\tp50_us\tp99_us\tmax_us\n")
	for _, name := range []string{"get", "list", "post", "patch", "delete", "watch-open"} {
		ks := l.kinds[name]
		fmt.Fprintf(&b, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", name, ks.sent, ks.ok, ks.sent-ks.ok,
			percentile(ks.latencies, 0.5), percentile(ks.latencies, 0.99), percentile(ks.latencies, 1))
	}
	if err := os.WriteFile(filepath.Join(dir, "requests.tsv"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	writeFailures := func(name string, fs []failure) error {
		var b strings.Builder
		b.WriteString("start_ns\tend_ns\tkind\tmethod\tcause\tdetail\n")
		for _, f := range fs {
			fmt.Fprintf(&b, "%d\t%d\t%s\t%s\t%s\t%s\n", f.Start, f.End, f.Kind, f.Method, f.Cause,
				strings.NewReplacer("\t", " ", "\n", " ").Replace(f.Detail))
		}
		return os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644)
	}
	if err := writeFailures("failures.tsv", l.failures); err != nil {
		return err
	}
	if err := writeFailures("slow.tsv", l.slow); err != nil {
		return err
	}
	if err := writeFailures("reconnects.tsv", l.recon); err != nil {
		return err
	}
	b.Reset()
	b.WriteString("id\tnamespace\tbookmarks\tstart_rv\tfinal_rv\texpected\treceived\tduplicates\tgaps\tout_of_order\tbookmarks_seen\tunasked_bookmarks\texpired\tlost_to_410\treconnects\topen_failures\n")
	for _, w := range watches {
		expected := countNS(w.start, final, int64(w.ns), k)
		var received int64
		for n := range w.seen {
			if n > w.start && n <= final {
				received++
			}
		}
		fmt.Fprintf(&b, "%d\tsoak-%d\t%t\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", w.id, w.ns, w.bookmarks,
			l.cfg.rvBase+w.start, l.cfg.rvBase+final, expected, received, w.dups, w.gaps, w.outOfOrder,
			w.bookmarksN, w.unasked, w.expired, w.lost, w.reconnects, w.openFails)
	}
	if err := os.WriteFile(filepath.Join(dir, "watches.tsv"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	b.Reset()
	b.WriteString("t_s\tvmrss_kib\trssanon_kib\tfds\tupstream_conns\n")
	for _, r := range s.rows {
		b.WriteString(r + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "rss.tsv"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Printf("load done after %.0f s: %d failures, %d slow, %d watch stream ends\n", took.Seconds(), len(l.failures), len(l.slow), len(l.recon))
	return nil
}
