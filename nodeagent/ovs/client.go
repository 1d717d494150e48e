// Package ovs is dunlin-node's client of the local Open vSwitch database: the chassis settings that
// ovn-controller reads, the integration bridge, and pod ports. It talks OVSDB through libovsdb, with the
// generated models of nodeagent/ovsmodel, and never shells out to ovs-vsctl.
package ovs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/notify"
	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

const (
	ifaceIDKey     = "iface-id"      // Interface external_ids key binding it to an OVN logical port
	installedKey   = "ovn-installed" // set to "true" by ovn-controller once the port's flows are in
	installedTSKey = "ovn-installed-ts"
)

// Client is a connected, monitoring client of the local OVS database. Reads are served from the
// libovsdb cache; writes are OVSDB transactions whose per-operation results are always checked.
type Client struct {
	cli client.Client

	writes atomic.Int64 // transactions sent, so tests can tell that an idempotent call wrote nothing

	changed notify.Keyed  // interface name -> woken on any change of it
	recheck time.Duration // waits re-read the cache this often besides events; 0 means defaultRecheck
}

// Connect dials endpoint (unix:PATH or tcp:IP:PORT), keeps reconnecting for ever, and monitors the
// Open_vSwitch, Bridge, Port and Interface tables. It retries the first connection and monitor until
// ctx ends, so the agent may start before OVS.
func Connect(ctx context.Context, endpoint string) (*Client, error) {
	return ConnectTLS(ctx, endpoint, nil)
}

// ConnectTLS is Connect that also dials ssl:IP:PORT endpoints, with tlsConfig (see internal/ovsdbtls).
func ConnectTLS(ctx context.Context, endpoint string, tlsConfig *tls.Config) (*Client, error) {
	if strings.HasPrefix(endpoint, "ssl:") && tlsConfig == nil {
		return nil, fmt.Errorf("OVS endpoint %s needs --ovn-ca-cert, --ovn-cert and --ovn-key", endpoint)
	}
	dbModel, err := ovsmodel.FullDatabaseModel()
	if err != nil {
		return nil, fmt.Errorf("OVS model: %w", err)
	}
	// CNI ADD looks ports up by the logical port they bind to.
	dbModel.SetIndexes(map[string][]model.ClientIndex{
		ovsmodel.InterfaceTable: {{Columns: []model.ColumnKey{{Column: "external_ids", Key: ifaceIDKey}}}},
	})
	logger := logr.Discard()
	if klog.V(5).Enabled() {
		logger = klog.Background().WithName("libovsdb")
	}
	c := &Client{}
	delay := 100 * time.Millisecond
	for {
		opts := []client.Option{client.WithEndpoint(endpoint)}
		if tlsConfig != nil {
			opts = append(opts, client.WithTLSConfig(tlsConfig))
		}
		cli, err := client.NewOVSDBClient(dbModel, append(opts,
			client.WithReconnect(5*time.Second, &backoff.ExponentialBackOff{
				InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.2, Multiplier: 2,
				MaxInterval: 2 * time.Second, MaxElapsedTime: 0, // never give up: libovsdb panics when it does
				Stop: backoff.Stop, Clock: backoff.SystemClock,
			}),
			client.WithLogger(&logger))...)
		if err != nil { // a bad endpoint or model: retrying cannot help
			return nil, fmt.Errorf("OVS client for %s: %w", endpoint, err)
		}
		if err = c.start(ctx, cli); err == nil {
			c.cli = cli
			klog.V(2).InfoS("Connected to the local OVS database", "endpoint", endpoint)
			return c, nil
		}
		// A fresh client per attempt: libovsdb only re-establishes monitors that were set up once.
		cli.Close()
		klog.ErrorS(err, "Cannot connect to the local OVS database, retrying", "endpoint", endpoint, "retryIn", delay)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to OVS %s: %w (last error: %v)", endpoint, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// start connects cli and sets up the monitor, with the event handler registered before the first
// rows arrive.
func (c *Client) start(ctx context.Context, cli client.Client) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cli.Connect(cctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	cli.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(table string, m model.Model) { c.wake(table, m) },
		UpdateFunc: func(table string, _, m model.Model) { c.wake(table, m) },
		DeleteFunc: func(table string, m model.Model) { c.wake(table, m) },
	})
	// Interface statistics change every few seconds: monitor only the columns we read.
	iface := &ovsmodel.Interface{}
	_, err := cli.Monitor(cctx, cli.NewMonitor(
		client.WithTable(&ovsmodel.OpenvSwitch{}),
		client.WithTable(&ovsmodel.Bridge{}),
		client.WithTable(&ovsmodel.Port{}),
		client.WithTable(iface, &iface.Name, &iface.Type, &iface.MAC, &iface.ExternalIDs, &iface.Error, &iface.Ofport, &iface.MTURequest),
	))
	if err != nil {
		return fmt.Errorf("monitor tables: %w", err)
	}
	return nil
}

// Close disconnects for good.
func (c *Client) Close() { c.cli.Close() }

// Connected reports whether the database connection is up (for health checks). libovsdb's own
// Connected stays true while it reconnects; it clears the current endpoint, though.
func (c *Client) Connected() bool { return c.cli.Connected() && c.cli.CurrentEndpoint() != "" }

// transact sends ops (nothing when there are none) and turns failed operations into an error:
// libovsdb's Transact succeeds even when an operation did not.
func (c *Client) transact(ctx context.Context, what string, ops []ovsdb.Operation) error {
	if len(ops) == 0 {
		return nil
	}
	c.writes.Add(1)
	res, err := c.cli.Transact(ctx, ops...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	opErrs, err := ovsdb.CheckOperationResults(res, ops)
	if len(opErrs) > 0 {
		errs := make([]error, 0, len(opErrs)+1)
		for _, e := range opErrs {
			errs = append(errs, e)
		}
		if len(res) > len(ops) && err != nil { // the commit itself failed too
			errs = append(errs, err)
		}
		return fmt.Errorf("%s: %w", what, errors.Join(errs...))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// table returns the cached rows of a monitored table without waiting for a reconnection to finish
// (readers get the last known state), or nil once the client is closed.
func (c *Client) table(name string) *cache.RowCache {
	tc := c.cli.Cache()
	if tc == nil {
		return nil
	}
	return tc.Table(name)
}

// rows returns a copy of every cached row of a monitored table.
func (c *Client) rows(table string) map[string]model.Model {
	t := c.table(table)
	if t == nil {
		return nil
	}
	return t.Rows()
}

// byIndex returns the cached row matching m's UUID or schema (name) index, or nil.
func byIndex[T model.Model](c *Client, table string, m T) T {
	var zero T
	t := c.table(table)
	if t == nil {
		return zero
	}
	_, row, err := t.RowByModel(m)
	if err != nil || row == nil {
		return zero
	}
	return row.(T)
}

func (c *Client) wake(table string, m model.Model) {
	switch table {
	case ovsmodel.InterfaceTable:
		c.changed.Wake(m.(*ovsmodel.Interface).Name)
		c.changed.Wake(anyPortKey)
	case ovsmodel.PortTable, ovsmodel.BridgeTable:
		c.changed.Wake(anyPortKey)
	}
}

// anyPortKey is woken on any change of a bridge, port or interface. Interface names cannot contain
// "*", so it never collides with one.
const anyPortKey = "*"

// SubscribePorts returns a channel that receives after any change of a bridge, port or interface (one
// pending wakeup at most), and a function that unsubscribes.
func (c *Client) SubscribePorts() (<-chan struct{}, func()) { return c.changed.Subscribe(anyPortKey) }
