// What a soak (bench/soak.sh) needs from the fake beyond main.go's routes, all behind
// optional flags so that the tests (tests/go_upstream.rs) see the server main.go
// describes: a set of accepted tokens that can change at once (the old token refused),
// a serving certificate reloaded in place, kube-apiserver's --goaway-chance, writes, and
// watches with real resourceVersion semantics over an event history that survives a
// restart of this process.
//
// The history is a pure function of the clock: event n (n >= 1) happens at
// epoch + n*period, in namespace soak-<n mod K>, with resourceVersion rvBase+n. A
// restarted server given the same -events-epoch knows every event that happened while
// it was down (as etcd does for a restarted kube-apiserver), so a watch resumed with
// resourceVersion=R gets exactly the events after R, and the soak's load driver can
// count the events each watch should have seen without asking anyone.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

var (
	tokensFile     = flag.String("tokens-file", "", "accepted tokens, one a line, read at start and on POST /tokens of -control (adds to -token)")
	controlAddr    = flag.String("control", "", "plain-HTTP control listener (POST /tokens, /reload-cert, /goaway?chance=F; GET /stats); off unless set")
	goawayFlag     = flag.Float64("goaway-chance", 0, "probability that an HTTP/2 response gets Connection: close, hence a GOAWAY (kube-apiserver's --goaway-chance)")
	eventsPeriod   = flag.Duration("events-period", 0, "one watch event every this long, over -events-namespaces namespaces in turn (0: no history)")
	eventsEpoch    = flag.Int64("events-epoch", 0, "Unix time in ns of event 0 (the same on every restart keeps the history)")
	eventsNS       = flag.Int("events-namespaces", 50, "namespaces soak-0 … soak-(K-1) the events go to in turn")
	rvBase         = flag.Int64("rv-base", 100000, "resourceVersion of event 0")
	watchWindow    = flag.Duration("watch-window", 2*time.Minute, "a watch from a resourceVersion older than this gets 410 Expired (the watch cache's window)")
	bookmarkPeriod = flag.Duration("bookmark-every", 5*time.Second, "BOOKMARK period for watches with allowWatchBookmarks=true")

	tokens      atomic.Pointer[map[string]bool]
	currentCert atomic.Pointer[tls.Certificate]
	goawayBits  atomic.Uint64

	unauthorizedSent, goawaysAsked, soakWatchesOpen, eventsSent, bookmarksSent, expiredSent, writes atomic.Int64
)

// loadTokens makes the accepted set: -token plus the lines of -tokens-file. Swapped
// whole, so a token removed from the file is refused from the next request on.
func loadTokens(first string) error {
	set := map[string]bool{}
	if first != "" {
		set[first] = true
	}
	if *tokensFile != "" {
		f, err := os.Open(*tokensFile)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if t := strings.TrimSpace(sc.Text()); t != "" {
				set[t] = true
			}
		}
	}
	tokens.Store(&set)
	return nil
}

func tokenAccepted(header string) bool {
	t, ok := strings.CutPrefix(header, "Bearer ")
	return ok && (*tokens.Load())[t]
}

func loadCert(cert, key string) error {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err == nil {
		currentCert.Store(&pair)
	}
	return err
}

func goawayChance() float64 { return math.Float64frombits(goawayBits.Load()) }

func stats() map[string]int64 {
	return map[string]int64{
		"connections": conns.Load(), "requests": requests.Load(), "h2requests": h2requests.Load(),
		"watches_open": watchesOpen.Load(), "watches_canceled": watchesCanceled.Load(),
		"unauthorized": unauthorizedSent.Load(), "goaways_asked": goawaysAsked.Load(),
		"soak_watches_open": soakWatchesOpen.Load(), "events_sent": eventsSent.Load(),
		"bookmarks_sent": bookmarksSent.Load(), "expired_sent": expiredSent.Load(), "writes": writes.Load(),
	}
}

// startControl serves the soak driver's commands on a listener of its own (plain HTTP,
// no token), so that a command never depends on the state it changes.
func startControl(cert, key string) {
	goawayBits.Store(math.Float64bits(*goawayFlag))
	if *controlAddr == "" {
		return
	}
	mux := http.NewServeMux()
	answer := func(w http.ResponseWriter, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok\n")
	}
	mux.HandleFunc("POST /tokens", func(w http.ResponseWriter, r *http.Request) {
		answer(w, loadTokens(flag.Lookup("token").Value.String()))
	})
	mux.HandleFunc("POST /reload-cert", func(w http.ResponseWriter, r *http.Request) {
		answer(w, loadCert(cert, key))
	})
	mux.HandleFunc("POST /goaway", func(w http.ResponseWriter, r *http.Request) {
		c, err := strconv.ParseFloat(r.URL.Query().Get("chance"), 64)
		if err == nil {
			goawayBits.Store(math.Float64bits(c))
		}
		answer(w, err)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(stats())
	})
	go func() {
		if err := http.ListenAndServe(*controlAddr, mux); err != nil {
			fmt.Fprintln(os.Stderr, "go-apiserver: control:", err)
			os.Exit(1)
		}
	}()
}

// soakRoutes serves every namespace but default (main.go's): LIST, watch and writes of
// pods. A pattern for the whole subtree, dispatched by hand, because a wildcard pattern
// would conflict with main.go's /api/v1/namespaces/default/pods/ in Go's ServeMux.
func soakRoutes(mux *http.ServeMux, auth func(http.HandlerFunc) http.HandlerFunc, writeJSON func(http.ResponseWriter, []byte)) {
	mux.HandleFunc("/api/v1/namespaces/", auth(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"), "/")
		if len(parts) < 2 || parts[1] != "pods" || len(parts) > 3 {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		ns := parts[0]
		if len(parts) == 2 {
			switch r.Method {
			case http.MethodGet:
				if q := r.URL.Query().Get("watch"); q == "1" || q == "true" {
					soakWatch(w, r, ns)
					return
				}
				body, _ := json.Marshal(map[string]any{"kind": "PodList", "apiVersion": "v1",
					"metadata": map[string]any{"resourceVersion": rv(nowEvent())}, "items": []any{}})
				writeJSON(w, body)
			case http.MethodPost:
				var obj struct {
					Metadata struct{ Name string } `json:"metadata"`
				}
				if err := json.NewDecoder(r.Body).Decode(&obj); err != nil || obj.Metadata.Name == "" {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				writes.Add(1)
				body, _ := json.Marshal(soakPod(ns, obj.Metadata.Name, nowEvent()))
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				w.Write(body)
			default:
				w.WriteHeader(http.StatusMethodNotAllowed)
			}
			return
		}
		// One pod: stateless (a restart must not turn a DELETE into a 404), every write
		// answered as the API server would answer a successful one.
		io.Copy(io.Discard, r.Body)
		switch r.Method {
		case http.MethodGet, http.MethodPatch, http.MethodPut, http.MethodDelete:
			if r.Method != http.MethodGet {
				writes.Add(1)
			}
			body, _ := json.Marshal(soakPod(ns, parts[2], nowEvent()))
			writeJSON(w, body)
		default:
			w.WriteHeader(http.StatusMethodNotAllowed)
		}
	}))
}

func soakPod(ns, name string, n int64) map[string]any {
	return map[string]any{
		"kind": "Pod", "apiVersion": "v1",
		"metadata": map[string]any{"name": name, "namespace": ns, "resourceVersion": rv(n),
			"uid": fmt.Sprintf("00000000-0000-4000-9000-%012x", n)},
		"spec":   map[string]any{"containers": []any{map[string]any{"name": "main", "image": "registry.example/soak:1"}}},
		"status": map[string]any{"phase": "Running"},
	}
}

func rv(n int64) string { return strconv.FormatInt(*rvBase+n, 10) }

// nowEvent is the last event that has happened (0 before the first, or with no history).
func nowEvent() int64 {
	if *eventsPeriod <= 0 {
		return 0
	}
	n := (time.Now().UnixNano() - *eventsEpoch) / int64(*eventsPeriod)
	return max(n, 0)
}

func eventTime(n int64) time.Time { return time.Unix(0, *eventsEpoch+n*int64(*eventsPeriod)) }

// soakWatch streams the events of namespace ns after the request's resourceVersion, then
// live ones, like the watch cache: 410 Expired (HTTP 200 and an ERROR event) for a
// position older than -watch-window, BOOKMARKs only when asked for.
func soakWatch(w http.ResponseWriter, r *http.Request, ns string) {
	soakWatchesOpen.Add(1)
	defer soakWatchesOpen.Add(-1)
	w.Header().Set("Content-Type", "application/json")
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	send := func(v any) bool {
		if enc.Encode(v) != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	idx, err := strconv.Atoi(strings.TrimPrefix(ns, "soak-"))
	history := *eventsPeriod > 0 && err == nil && strings.HasPrefix(ns, "soak-") && idx >= 0 && idx < *eventsNS
	now := nowEvent()
	cur := now // "" and "0": from now on (no initial state: these namespaces start empty)
	if q := r.URL.Query().Get("resourceVersion"); q != "" && q != "0" {
		v, err := strconv.ParseInt(q, 10, 64)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		cur = v - *rvBase
		if history && cur < now-int64(*watchWindow / *eventsPeriod) {
			expiredSent.Add(1)
			send(map[string]any{"type": "ERROR", "object": map[string]any{
				"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{}, "status": "Failure",
				"message": fmt.Sprintf("too old resource version: %s (%s)", q, rv(now-int64(*watchWindow / *eventsPeriod))),
				"reason":  "Expired", "code": 410,
			}})
			return
		}
	}
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	if !history {
		<-r.Context().Done()
		return
	}
	var bookmarks <-chan time.Time
	if b := r.URL.Query().Get("allowWatchBookmarks"); (b == "true" || b == "1") && *bookmarkPeriod > 0 {
		t := time.NewTicker(*bookmarkPeriod)
		defer t.Stop()
		bookmarks = t.C
	}
	k := int64(*eventsNS)
	// next is the first event of this namespace after cur.
	next := func(cur int64) int64 { return cur + 1 + ((int64(idx)-(cur+1))%k+k)%k }
	types := []string{"ADDED", "MODIFIED", "MODIFIED", "DELETED"}
	emit := func(n int64) bool {
		round := n / k
		if !send(map[string]any{"type": types[round%4], "object": soakPod(ns, fmt.Sprintf("ev-%d", round%20), n)}) {
			return false
		}
		eventsSent.Add(1)
		cur = n
		return true
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(time.Until(eventTime(next(cur))))
		select {
		case <-r.Context().Done():
			return
		case <-timer.C:
			if !emit(next(cur)) {
				return
			}
		case <-bookmarks:
			// Every event of ns up to now is sent first (they go out at their time, so
			// at most one is pending): then now is a safe place to resume from.
			now := nowEvent()
			for next(cur) <= now {
				if !emit(next(cur)) {
					return
				}
			}
			cur = max(cur, now)
			if !send(map[string]any{"type": "BOOKMARK", "object": map[string]any{"kind": "Pod", "apiVersion": "v1",
				"metadata": map[string]any{"resourceVersion": rv(cur)}}}) {
				return
			}
			bookmarksSent.Add(1)
		}
	}
}
