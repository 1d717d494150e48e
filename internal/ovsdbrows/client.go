// Package ovsdbrows reads and edits rows of any OVSDB database through libovsdb without a generated
// model or a monitor: dunlinctl selects a few rows of NB, SB, _Server or a node's Open_vSwitch over one
// short-lived connection each, with a connect timeout of its own, and reads them as strings.
package ovsdbrows

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// Client is a libovsdb client of one database at one endpoint.
type Client struct {
	Endpoint string
	cli      client.Client
	timeout  time.Duration
}

// Dial connects to db at endpoint (unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT) within timeout, which
// also bounds every later call. tlsCfg is required for ssl:. Errors do not name the endpoint: the
// caller does.
func Dial(ctx context.Context, endpoint, db string, tlsCfg *tls.Config, timeout time.Duration) (*Client, error) {
	// No table is typed: an empty model of the database validates against any version of its schema,
	// and libovsdb checks hand-built operations against the server's schema.
	dbModel, err := model.NewClientDBModel(db, map[string]model.Model{})
	if err != nil {
		return nil, fmt.Errorf("model of %s: %w", db, err)
	}
	return dial(ctx, endpoint, dbModel, tlsCfg, timeout)
}

func dial(ctx context.Context, endpoint string, dbModel model.ClientDBModel, tlsCfg *tls.Config, timeout time.Duration) (*Client, error) {
	given := endpoint
	proto, addr, _ := strings.Cut(endpoint, ":")
	switch proto {
	case "unix":
		// libovsdb reads a relative unix: path as none, and would dial its default socket instead.
		abs, err := filepath.Abs(addr)
		if err != nil {
			return nil, err
		}
		endpoint = "unix:" + abs
	case "tcp":
	case "ssl":
		if tlsCfg == nil {
			return nil, errors.New("ssl: needs --ovn-ca-cert (and --ovn-cert, --ovn-key)")
		}
	default:
		return nil, errors.New("not unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT")
	}
	// No reconnection: a member that does not answer is reported, not waited for. libovsdb logs
	// nothing without a logger.
	opts := []client.Option{client.WithEndpoint(endpoint)}
	if tlsCfg != nil {
		opts = append(opts, client.WithTLSConfig(tlsCfg))
	}
	cli, err := client.NewOVSDBClient(dbModel, opts...)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := cli.Connect(cctx); err != nil {
		cli.Close()
		// libovsdb's error starts with the endpoint, which the callers name already.
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
		if errors.Is(cctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("no answer within %s: %w", timeout, err)
		}
		return nil, err
	}
	return &Client{Endpoint: given, cli: cli, timeout: timeout}, nil
}

// SetTimeout changes the deadline of each later call: a short one finds a hung server quickly, a
// long one lets a large read or write finish.
func (c *Client) SetTimeout(d time.Duration) { c.timeout = d }

// Close closes the connection.
func (c *Client) Close() { c.cli.Close() }

// Schema is the database's schema, as the server sent it at connection.
func (c *Client) Schema() ovsdb.DatabaseSchema { return c.cli.Schema() }

// Transact runs ops in one transaction and returns the rows each returned (selects). An error of any
// operation, or of the commit, fails it.
func (c *Client) Transact(ops ...ovsdb.Operation) ([][]Row, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	db := c.cli.Schema().Name
	res, err := c.cli.Transact(ctx, ops...)
	if err != nil {
		return nil, fmt.Errorf("%s: transaction on %s: %w", c.Endpoint, db, err)
	}
	if opErrs, err := ovsdb.CheckOperationResults(res, ops); err != nil {
		var errs []error
		for _, e := range opErrs {
			errs = append(errs, fmt.Errorf("%s %s: %w", e.Operation().Op, e.Operation().Table, e))
		}
		if len(errs) == 0 { // the commit failed
			errs = append(errs, err)
		}
		return nil, fmt.Errorf("%s: transaction on %s: %w", c.Endpoint, db, errors.Join(errs...))
	}
	rows := make([][]Row, len(ops))
	for i := range ops {
		for _, r := range res[i].Rows {
			rows[i] = append(rows[i], Row(r))
		}
	}
	return rows, nil
}

// Select returns the rows of table matching where (all when none), with columns (all when none).
func (c *Client) Select(table string, where []ovsdb.Condition, columns ...string) ([]Row, error) {
	rows, err := c.Transact(SelectOp(table, where, columns...))
	if err != nil {
		return nil, err
	}
	return rows[0], nil
}

// SelectOp is the select of Select, for a transaction of several.
func SelectOp(table string, where []ovsdb.Condition, columns ...string) ovsdb.Operation {
	return ovsdb.Operation{Op: ovsdb.OperationSelect, Table: table, Where: where, Columns: columns}
}
