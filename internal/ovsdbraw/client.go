// Package ovsdbraw is a small, read-mostly OVSDB client (RFC 7047 JSON-RPC) for tools: it selects rows
// of any database as plain JSON, without a generated model or a monitor of whole tables, so that
// dunlinctl can read NB, SB, _Server and a node's Open_vSwitch with one short-lived connection each and
// a connect timeout of its own.
package ovsdbraw

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Client is one connection to one OVSDB server endpoint.
type Client struct {
	Endpoint string
	conn     net.Conn
	enc      *json.Encoder
	dec      *json.Decoder
	timeout  time.Duration
	mu       sync.Mutex
	id       int
}

// Dial connects to endpoint (unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT) within timeout, which also
// bounds every later call. tlsCfg is required for ssl:.
func Dial(ctx context.Context, endpoint string, tlsCfg *tls.Config, timeout time.Duration) (*Client, error) {
	proto, addr, ok := strings.Cut(endpoint, ":")
	if !ok {
		return nil, fmt.Errorf("%s: not unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT", endpoint)
	}
	d := &net.Dialer{Timeout: timeout}
	var conn net.Conn
	var err error
	switch proto {
	case "unix":
		conn, err = d.DialContext(ctx, "unix", addr)
	case "tcp":
		conn, err = d.DialContext(ctx, "tcp", addr)
	case "ssl":
		if tlsCfg == nil {
			return nil, fmt.Errorf("%s: ssl: needs --ovn-ca-cert (and --ovn-cert, --ovn-key)", endpoint)
		}
		td := &tls.Dialer{NetDialer: d, Config: tlsCfg}
		conn, err = td.DialContext(ctx, "tcp", addr)
	default:
		return nil, fmt.Errorf("%s: unknown protocol %q (unix, tcp or ssl)", endpoint, proto)
	}
	if err != nil {
		return nil, err
	}
	return &Client{Endpoint: endpoint, conn: conn, enc: json.NewEncoder(conn), dec: json.NewDecoder(conn), timeout: timeout}, nil
}

// SetTimeout changes the deadline of each later call: a short one finds a hung server quickly, a
// long one lets a large read or write finish.
func (c *Client) SetTimeout(d time.Duration) {
	c.mu.Lock()
	c.timeout = d
	c.mu.Unlock()
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

type response struct {
	ID     any             `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  any             `json:"error"`
}

// Call sends one request and returns its result. The server's echo requests are answered meanwhile.
func (c *Client) Call(method string, params ...any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.id++
	id := c.id
	if params == nil {
		params = []any{}
	}
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return nil, err
	}
	if err := c.enc.Encode(map[string]any{"method": method, "params": params, "id": id}); err != nil {
		return nil, fmt.Errorf("%s: send %s: %w", c.Endpoint, method, err)
	}
	for {
		var r response
		if err := c.dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", c.Endpoint, method, err)
		}
		if r.Method == "echo" {
			if err := c.enc.Encode(map[string]any{"result": r.Params, "error": nil, "id": r.ID}); err != nil {
				return nil, err
			}
			continue
		}
		if n, ok := r.ID.(float64); !ok || int(n) != id {
			continue // a notification
		}
		if r.Error != nil {
			return nil, fmt.Errorf("%s: %s: %v", c.Endpoint, method, r.Error)
		}
		return r.Result, nil
	}
}

// Row is one row as the server sends it: column name to OVSDB JSON value.
type Row map[string]any

// OpResult is the result of one operation of a transaction.
type OpResult struct {
	Count   int    `json:"count"`
	Rows    []Row  `json:"rows"`
	Error   string `json:"error"`
	Details string `json:"details"`
	UUID    []any  `json:"uuid"`
}

// Transact runs ops (RFC 7047 operations as maps) in one transaction of db. An error of any operation
// is returned as an error; the results are returned too.
func (c *Client) Transact(db string, ops ...any) ([]OpResult, error) {
	raw, err := c.Call("transact", append([]any{db}, ops...)...)
	if err != nil {
		return nil, err
	}
	var res []OpResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("%s: transact reply: %w", c.Endpoint, err)
	}
	var errs []error
	for i, r := range res {
		if r.Error != "" {
			errs = append(errs, fmt.Errorf("operation %d: %s: %s", i, r.Error, r.Details))
		}
	}
	if len(res) > len(ops) { // a commit error comes as an extra result
		errs = append(errs, fmt.Errorf("%s: %s", res[len(res)-1].Error, res[len(res)-1].Details))
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("%s: transaction on %s: %w", c.Endpoint, db, errors.Join(errs...))
	}
	return res, nil
}

// Select returns the rows of table matching where (RFC 7047 conditions; nil for all), with columns
// (all when none given).
func (c *Client) Select(db, table string, where []any, columns ...string) ([]Row, error) {
	if where == nil {
		where = []any{}
	}
	op := map[string]any{"op": "select", "table": table, "where": where}
	if len(columns) > 0 {
		op["columns"] = columns
	}
	res, err := c.Transact(db, op)
	if err != nil {
		return nil, err
	}
	return res[0].Rows, nil
}

// SchemaVersion returns the version of db's schema.
func (c *Client) SchemaVersion(db string) (string, error) {
	raw, err := c.Call("get_schema", db)
	if err != nil {
		return "", err
	}
	var s struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s.Version, nil
}

// Schema returns db's schema.
func (c *Client) Schema(db string) (*Schema, error) {
	raw, err := c.Call("get_schema", db)
	if err != nil {
		return nil, err
	}
	var s Schema
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: schema of %s: %w", c.Endpoint, db, err)
	}
	return &s, nil
}
