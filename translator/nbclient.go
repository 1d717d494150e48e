package translator

import (
	"context"
	"crypto/tls"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// NBModel returns the NB database model with the indexes Dunlin's store needs, and the schema.
func NBModel() (model.ClientDBModel, ovsdb.DatabaseSchema, error) {
	base, err := nbmodel.FullDatabaseModel()
	if err != nil {
		return model.ClientDBModel{}, ovsdb.DatabaseSchema{}, fmt.Errorf("NB model: %w", err)
	}
	schema := nbmodel.Schema()
	dbModel, err := nbstore.ClientDBModel(base, schema, TableSpecs())
	return dbModel, schema, err
}

// ConnectNB connects to the NB database at the comma-separated OVSDB endpoints (unix:PATH, tcp:IP:PORT,
// ssl:IP:PORT), keeps reconnecting for ever, and monitors the managed tables. It retries the first
// connection until ctx ends, so a controller started before its database simply waits.
func ConnectNB(ctx context.Context, addresses string, tlsConfig *tls.Config, dbModel model.ClientDBModel) (client.Client, error) {
	return ConnectNBTables(ctx, addresses, tlsConfig, dbModel, TableSpecs())
}

// ConnectNBTables is ConnectNB monitoring the tables of specs (and NB_Global).
func ConnectNBTables(ctx context.Context, addresses string, tlsConfig *tls.Config, dbModel model.ClientDBModel, specs map[string]nbstore.TableSpec) (client.Client, error) {
	opts := []client.Option{
		// A RAFT election takes one to two election timers (1 s by default): retrying at most a second
		// apart finds the new leader soon after, where a longer backoff would add seconds to every
		// failover. An attempt costs each member a connection and the schema.
		client.WithReconnect(10*time.Second, &backoff.ExponentialBackOff{
			InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.2, Multiplier: 2,
			MaxInterval: time.Second, MaxElapsedTime: 0, // never give up: libovsdb panics when it does
			Stop: backoff.Stop, Clock: backoff.SystemClock,
		}),
		client.WithLeaderOnly(true),
	}
	endpoints, err := ovsdbtls.Endpoints("NB", addresses, tlsConfig)
	if err != nil {
		return nil, err
	}
	for _, ep := range endpoints {
		opts = append(opts, client.WithEndpoint(ep))
	}
	if tlsConfig != nil {
		opts = append(opts, client.WithTLSConfig(tlsConfig))
	}
	logger := logr.Discard()
	if klog.V(5).Enabled() {
		logger = klog.Background().WithName("libovsdb")
	}
	opts = append(opts, client.WithLogger(&logger))
	cli, err := client.NewOVSDBClient(dbModel, opts...)
	if err != nil {
		return nil, fmt.Errorf("NB client: %w", err)
	}
	delay := 200 * time.Millisecond
	order := endpoints
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = cli.Connect(cctx)
		cancel()
		if err == nil {
			break
		}
		if len(order) > 1 {
			// libovsdb tries the endpoints in order within one deadline: a member that hangs would take
			// all of it at every attempt. Start the next attempt with the next member.
			order = append(slices.Clone(order[1:]), order[0])
			moveLast(cli, order)
		}
		klog.ErrorS(err, "Cannot connect to the OVN NB database, retrying", "address", addresses, "retryIn", delay)
		select {
		case <-ctx.Done():
			// The last failure says why (a certificate the CA did not sign, say), not only that time ran out.
			return nil, fmt.Errorf("connect to NB %s: %w (last error: %v)", addresses, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	// NB_Global carries the writer claim and commit marker of the committer (nbstore.Committer).
	tables := []client.MonitorOption{client.WithTable(&nbmodel.NBGlobal{})}
	for table := range specs {
		m := reflect.New(dbModel.Types()[table].Elem()).Interface().(model.Model)
		tables = append(tables, client.WithTable(m))
	}
	if _, err := cli.Monitor(ctx, cli.NewMonitor(tables...)); err != nil {
		cli.Close()
		return nil, fmt.Errorf("monitor NB tables: %w", err)
	}
	if len(endpoints) > 1 {
		go watchHung(ctx, cli, endpoints)
	}
	return cli, nil
}

// How a member that hangs is noticed (see watchHung).
const (
	hungProbeEvery = 5 * time.Second
	hungAnswerIn   = 5 * time.Second
)

// watchHung sends the connected member an echo now and then. A member that does not answer (hung: a
// frozen VM, a partition that leaves the socket open) keeps the client connected to it for ever, its
// transactions timing out, while the other members have elected a new leader: libovsdb notices only
// closed connections and leadership changes the member itself reports. Such a member is moved to the
// end of the endpoints, which makes the client reconnect: libovsdb tries the endpoints in order within
// one deadline, and would spend it on the hung member first. Last, it is still tried: a leader that
// was only slow is found again once the others answer that they do not lead.
func watchHung(ctx context.Context, cli client.Client, endpoints []string) {
	tick := time.NewTicker(hungProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !nbstore.Connected(cli) {
			continue
		}
		current := cli.CurrentEndpoint()
		echoCtx, cancel := context.WithTimeout(ctx, hungAnswerIn)
		err := cli.Echo(echoCtx)
		timedOut := echoCtx.Err() != nil // libovsdb's Echo reports a timeout as a wrong answer
		cancel()
		if err == nil || !timedOut || ctx.Err() != nil {
			continue
		}
		others := slices.DeleteFunc(slices.Clone(endpoints), func(ep string) bool { return ep == current })
		klog.ErrorS(err, "The OVN NB member does not answer, connecting to another one", "endpoint", current,
			"waited", hungAnswerIn, "others", others)
		endpoints = append(others, current)
		moveLast(cli, endpoints) // drops the connection to current
	}
}

// moveLast makes order, whose last endpoint is the client's first (active) one, the client's order.
// Given order at once, libovsdb would keep its active endpoint first: it is given without it first,
// which also drops a connection to it.
func moveLast(cli client.Client, order []string) {
	cli.UpdateEndpoints(order[:len(order)-1])
	cli.UpdateEndpoints(order)
}
