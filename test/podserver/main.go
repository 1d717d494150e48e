// Command podserver is the workload of the end-to-end tests' pods: it runs inside a pod's network
// namespace and answers so that tests can check reachability, load balancing and move data.
//
// On every -tcp port (HTTP):
//
//	GET /          -> "<pod name>\n"
//	GET /client    -> "<pod name> <client address as seen by the pod>\n"
//	GET /bytes?n=N -> N bytes of a repeating pattern
//
// On every -udp port, each datagram is answered with "<pod name> <client address>\n".
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func main() {
	tcp := flag.String("tcp", "8080", "comma-separated TCP ports serving HTTP")
	udp := flag.String("udp", "", "comma-separated UDP ports answering each datagram")
	name := flag.String("name", "", "pod name to answer with")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, *name)
	})
	mux.HandleFunc("GET /client", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, *name, r.RemoteAddr)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "n must be 0..1GiB", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		chunk := bytes.Repeat([]byte("dunlin-"), 64<<10/7)
		for n > 0 {
			c := chunk
			if len(c) > n {
				c = c[:n]
			}
			if _, err := w.Write(c); err != nil {
				return
			}
			n -= len(c)
		}
	})
	errs := make(chan error)
	for _, p := range ports(*tcp) {
		srv := &http.Server{Addr: ":" + p, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { errs <- srv.ListenAndServe() }()
	}
	for _, p := range ports(*udp) {
		conn, err := net.ListenPacket("udp", ":"+p)
		if err != nil {
			log.Fatal(err)
		}
		go func() { errs <- serveUDP(conn, *name) }()
	}
	log.Fatal(<-errs)
}

func ports(list string) []string {
	var out []string
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func serveUDP(conn net.PacketConn, name string) error {
	buf := make([]byte, 64<<10)
	for {
		_, addr, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo([]byte(name+" "+addr.String()+"\n"), addr); err != nil {
			log.Printf("answer %s: %v", addr, err)
		}
	}
}
