// The relay between kube-ambassador and the fake API server. On POST /freeze?seconds=N
// of its control listener, every connection open at that moment stops moving bytes in
// either direction while its sockets stay open (the peer's kernel still ACKs and
// answers keep-alive probes), which is what a black-holed connection looks like to an
// HTTP/2 client: only an application-level PING can tell. A frozen connection ends when
// the proxy closes it (it found it dead), or after N seconds (as a TCP timeout would
// eventually); GET /freeze reports which, for the last freeze. Connections made after
// the command are not frozen: the network path is fine, one connection is not.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// pair is one relayed connection: a the proxy's side, b the fake's.
type pair struct {
	a, b   net.Conn
	frozen atomic.Bool
	once   sync.Once
	done   chan struct{}
	// byProxy is set, with the time, when the proxy closed a frozen connection.
	byProxy atomic.Int64
}

// freezeResult is what became of the connections of the last freeze.
type freezeResult struct {
	Start     time.Time
	Frozen    []*pair
	LimitSecs float64
}

// close closes done before the sockets, so that a read failing because of it can tell.
func (p *pair) close() { p.once.Do(func() { close(p.done); p.a.Close(); p.b.Close() }) }

// pump copies src to dst until either side ends, or a freeze: then what was read is
// never written, and the pump waits for the freeze to end with the connection.
func (p *pair) pump(dst, src net.Conn) {
	defer p.close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if p.frozen.Load() {
			if src == p.a {
				// Nothing the proxy sends goes through, but its close is noticed.
				for err == nil {
					_, err = src.Read(buf)
				}
				select {
				case <-p.done: // our own close, at the limit
				default:
					p.byProxy.Store(time.Now().UnixNano())
				}
				return
			}
			<-p.done // closed by the proxy or the freeze's timer, not before
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func relay(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "where the proxy connects")
	upstream := fs.String("upstream", "", "the fake API server's address")
	control := fs.String("control", "", "plain-HTTP control listener (POST /freeze?seconds=N, GET /stats)")
	fs.Parse(args)

	var mu sync.Mutex
	open := map[*pair]bool{}
	var accepted, dialFailed, frozenTotal atomic.Int64
	var last atomic.Pointer[freezeResult]

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /freeze", func(w http.ResponseWriter, r *http.Request) {
		secs, err := strconv.ParseFloat(r.URL.Query().Get("seconds"), 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var frozen []*pair
		mu.Lock()
		for p := range open {
			p.frozen.Store(true)
			frozen = append(frozen, p)
		}
		mu.Unlock()
		frozenTotal.Add(int64(len(frozen)))
		last.Store(&freezeResult{Start: time.Now(), Frozen: frozen, LimitSecs: secs})
		time.AfterFunc(time.Duration(secs*float64(time.Second)), func() {
			for _, p := range frozen {
				p.close()
			}
		})
		fmt.Fprintf(w, "%d\n", len(frozen))
	})
	mux.HandleFunc("GET /freeze", func(w http.ResponseWriter, r *http.Request) {
		f := last.Load()
		if f == nil {
			http.Error(w, "no freeze yet", http.StatusNotFound)
			return
		}
		if r.URL.Query().Has("open") { // how many are still open
			n := 0
			for _, p := range f.Frozen {
				select {
				case <-p.done:
				default:
					n++
				}
			}
			fmt.Fprintf(w, "%d\n", n)
			return
		}
		// One line: how many the proxy closed itself and how soon, how many the limit.
		var byProxy []float64
		for _, p := range f.Frozen {
			if t := p.byProxy.Load(); t != 0 {
				byProxy = append(byProxy, float64(t-f.Start.UnixNano())/1e9)
			}
		}
		sort.Float64s(byProxy)
		fmt.Fprintf(w, "%d frozen: %d closed by the proxy", len(f.Frozen), len(byProxy))
		if len(byProxy) > 0 {
			fmt.Fprintf(w, " after %.1f–%.1f s", byProxy[0], byProxy[len(byProxy)-1])
		}
		fmt.Fprintf(w, ", %d at the %.0f s limit\n", len(f.Frozen)-len(byProxy), f.LimitSecs)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(open)
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]int64{"open": int64(n), "accepted": accepted.Load(),
			"dial_failed": dialFailed.Load(), "frozen_total": frozenTotal.Load()})
	})
	cl, err := net.Listen("tcp", *control)
	if err != nil {
		return err
	}
	go http.Serve(cl, mux)
	fmt.Printf("relay on %d\n", ln.Addr().(*net.TCPAddr).Port)

	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		accepted.Add(1)
		go func() {
			u, err := net.DialTimeout("tcp", *upstream, 2*time.Second)
			if err != nil {
				// The server is down (a restart): the proxy sees its connection closed.
				dialFailed.Add(1)
				c.Close()
				return
			}
			p := &pair{a: c, b: u, done: make(chan struct{})}
			mu.Lock()
			open[p] = true
			mu.Unlock()
			go p.pump(u, c)
			p.pump(c, u)
			// Both directions end on close; wait for the other pump through the conns.
			mu.Lock()
			delete(open, p)
			mu.Unlock()
		}()
	}
}
