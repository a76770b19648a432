// A fake Kubernetes API server on Go's own net/http, the stack every real API server
// runs: TLS with ALPN h2 and http/1.1, HTTP/2 from the standard library (the bundled
// golang.org/x/net/http2), so its framing, flow control, SETTINGS, GOAWAY and PING
// handling are Go's, not ours. The Rust tests (tests/go_upstream.rs) and the benchmark
// use it as an independent judge of the proxy's upstream side. Standard library only:
// it builds offline.
//
// Routes: /version; /api/v1/namespaces/default/pods (a LIST of -pods pods with
// Content-Length, as the API server's JSON serializer writes it; ?watch=1 streams ADDED
// events for the first three pods, then holds the stream open until the client leaves);
// /api/v1/namespaces/default/pods/NAME; /debug/stats (no auth): counters as JSON.
// -goaway-every N sets "Connection: close" on every N-th HTTP/2 response, which Go's
// server turns into a GOAWAY (what kube-apiserver's --goaway-chance does, made
// deterministic). The optional flags of soak.go (bench/soak.sh) add the rest of a real
// API server's behaviour that a soak needs; without them the server is as described here.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

var (
	conns, h2requests, requests, watchesOpen, watchesCanceled atomic.Int64
)

func pod(i int) map[string]any {
	return map[string]any{
		"kind":       "Pod",
		"apiVersion": "v1",
		"metadata": map[string]any{
			"name":              fmt.Sprintf("pod-%d", i),
			"namespace":         "default",
			"uid":               fmt.Sprintf("00000000-0000-4000-8000-%012x", i),
			"resourceVersion":   strconv.Itoa(1000 + i),
			"creationTimestamp": "2026-11-27T07:00:00Z",
			"labels":            map[string]string{"app": "demo"},
		},
		"spec": map[string]any{"containers": []any{map[string]any{
			"name": "main", "image": "registry.example/demo:1",
			"resources": map[string]any{"requests": map[string]string{"cpu": "100m", "memory": "64Mi"}},
		}}},
		"status": map[string]any{"phase": "Running", "podIP": fmt.Sprintf("10.0.%d.%d", i/256, i%256)},
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	cert := flag.String("cert", "", "server certificate (PEM)")
	key := flag.String("key", "", "server key (PEM)")
	token := flag.String("token", "", "the bearer token accepted")
	pods := flag.Int("pods", 500, "pods in the LIST")
	goawayEvery := flag.Int64("goaway-every", 0, "GOAWAY after every N-th HTTP/2 response (0: never)")
	maxStreams := flag.Int("max-streams", 1000, "SETTINGS_MAX_CONCURRENT_STREAMS (kube-apiserver's default)")
	flag.Parse()

	items := make([]any, *pods)
	for i := range items {
		items[i] = pod(i)
	}
	list, _ := json.Marshal(map[string]any{
		"kind": "PodList", "apiVersion": "v1",
		"metadata": map[string]any{"resourceVersion": "5000"}, "items": items,
	})
	unauthorized := []byte(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)

	loadTokens(*token)
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !tokenAccepted(r.Header.Get("Authorization")) {
				unauthorizedSent.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				w.Write(unauthorized)
				return
			}
			requests.Add(1)
			if r.ProtoMajor == 2 {
				n := h2requests.Add(1)
				if *goawayEvery > 0 && n%*goawayEvery == 0 ||
					rand.Float64() < goawayChance() {
					goawaysAsked.Add(1)
					w.Header().Set("Connection", "close")
				}
			}
			h(w, r)
		}
	}
	writeJSON := func(w http.ResponseWriter, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/version", auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, []byte(`{"major":"1","minor":"32","gitVersion":"v1.32.0-go-fake"}`))
	}))
	mux.HandleFunc("/api/v1/namespaces/default/pods", auth(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query().Get("watch"); q == "1" || q == "true" {
			watch(w, r)
			return
		}
		writeJSON(w, list)
	}))
	mux.HandleFunc("/api/v1/namespaces/default/pods/", auth(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/default/pods/")
		i, err := strconv.Atoi(strings.TrimPrefix(name, "pod-"))
		if err != nil || i < 0 || i >= *pods {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		body, _ := json.Marshal(pod(i))
		writeJSON(w, body)
	}))
	soakRoutes(mux, auth, writeJSON)
	mux.HandleFunc("/debug/stats", func(w http.ResponseWriter, r *http.Request) {
		// ?watches=N waits (up to 30 s) until N watches are open, so a test can
		// wait on the event instead of sleeping.
		if want := r.URL.Query().Get("watches"); want != "" {
			n, _ := strconv.ParseInt(want, 10, 64)
			deadline := time.Now().Add(30 * time.Second)
			for watchesOpen.Load() != n && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
		}
		body, _ := json.Marshal(stats())
		writeJSON(w, body)
	})

	// The certificate is read again on /reload-cert of the control listener (soak.go),
	// as kube-apiserver reloads its serving certificate: existing connections keep theirs.
	if err := loadCert(*cert, *key); err != nil {
		fmt.Fprintln(os.Stderr, "go-apiserver:", err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler: mux,
		TLSConfig: &tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return currentCert.Load(), nil },
			NextProtos:     []string{"h2", "http/1.1"},
		},
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: *maxStreams},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-apiserver:", err)
		os.Exit(1)
	}
	startControl(*cert, *key)
	fmt.Printf("listening on %d\n", ln.Addr().(*net.TCPAddr).Port)
	if err := srv.Serve(tls.NewListener(ln, srv.TLSConfig)); err != nil {
		fmt.Fprintln(os.Stderr, "go-apiserver:", err)
		os.Exit(1)
	}
}

func watch(w http.ResponseWriter, r *http.Request) {
	watchesOpen.Add(1)
	defer watchesOpen.Add(-1)
	w.Header().Set("Content-Type", "application/json")
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	for i := 0; i < 3; i++ {
		enc.Encode(map[string]any{"type": "ADDED", "object": pod(i)})
		if flusher != nil {
			flusher.Flush()
		}
	}
	<-r.Context().Done()
	watchesCanceled.Add(1)
}
