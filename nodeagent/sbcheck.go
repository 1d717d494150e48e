package nodeagent

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"k8s.io/klog/v2"
)

// sbDatabase is the database --sb-address must serve.
const sbDatabase = "OVN_Southbound"

// CheckSB connects to the SB endpoints (comma-separated, as ovn-remote takes them) with tlsConfig for
// ssl: ones, checks that one of them serves the SB database, and disconnects. ovn-controller keeps the
// real connection, with TLS settings of its own; this one tells the operator in dunlin-node's log, at
// start, that the address and the certificates are right (or why not: a certificate the CA did not
// sign, another server name), where the failure would otherwise show only in ovn-controller's log.
func CheckSB(ctx context.Context, addresses string, tlsConfig *tls.Config) error {
	// No table is monitored or read: an empty model of the database validates against any schema.
	dbModel, err := model.NewClientDBModel(sbDatabase, map[string]model.Model{})
	if err != nil {
		return fmt.Errorf("SB model: %w", err)
	}
	endpoints, err := ovsdbtls.Endpoints("SB", addresses, tlsConfig)
	if err != nil {
		return err
	}
	var opts []client.Option
	for _, ep := range endpoints {
		opts = append(opts, client.WithEndpoint(ep))
	}
	if tlsConfig != nil {
		opts = append(opts, client.WithTLSConfig(tlsConfig))
	}
	cli, err := client.NewOVSDBClient(dbModel, opts...)
	if err != nil {
		return fmt.Errorf("SB client: %w", err)
	}
	defer cli.Close()
	if err := cli.Connect(ctx); err != nil {
		return fmt.Errorf("connect to SB %s: %w", addresses, err)
	}
	return nil
}

// watchSB runs CheckSB until it succeeds, logging each failure, at growing intervals: it never holds up
// the agent, whose pods work without it.
func (a *Agent) watchSB(ctx context.Context, tlsConfig *tls.Config) {
	logger := klog.FromContext(ctx)
	delay := 2 * time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := CheckSB(cctx, a.cfg.SBAddress, tlsConfig)
		cancel()
		if err == nil {
			logger.Info("OVN SB database reachable", "sb", a.cfg.SBAddress, "tls", tlsConfig != nil)
			return
		}
		logger.Error(err, "Cannot reach the OVN SB database that ovn-controller is pointed at; check the address and, for ssl:, the certificates (ovn-controller uses its own, see ovs-vsctl set-ssl)",
			"sb", a.cfg.SBAddress, "retryIn", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Minute)
	}
}
