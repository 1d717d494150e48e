package ovsdbrows

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"github.com/ovn-kubernetes/libovsdb/ovsdb/serverdb"
)

// Member is what one endpoint of a database said about itself (its _Server row for the database).
type Member struct {
	Endpoint  string `json:"endpoint"`
	Error     string `json:"error,omitempty"`
	Model     string `json:"model,omitempty"` // standalone, clustered, relay
	Leader    bool   `json:"leader"`
	Connected bool   `json:"connected"`
}

// Endpoints splits a comma-separated OVSDB address list.
func Endpoints(addresses string) []string {
	var out []string
	for _, ep := range strings.Split(addresses, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			out = append(out, ep)
		}
	}
	return out
}

// Connect asks every endpoint of addresses about db, and returns what each said and a client of db at
// the member that can be written to: the RAFT leader of a clustered database, or a standalone server.
// The client is nil (and err says why, endpoint by endpoint) when none answers.
func Connect(ctx context.Context, what, addresses, db string, tlsCfg *tls.Config, timeout time.Duration) ([]Member, *Client, error) {
	eps := Endpoints(addresses)
	if len(eps) == 0 {
		return nil, nil, fmt.Errorf("%s: no address given", what)
	}
	var members []Member
	var failures []string
	best := ""
	for _, ep := range eps {
		m, err := member(ctx, ep, db, tlsCfg, timeout)
		members = append(members, m)
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", ep, err))
			continue
		}
		if best == "" && m.Connected && (m.Leader || m.Model != serverdb.DatabaseModelClustered) {
			best = ep
		}
	}
	if best == "" {
		if len(failures) == 0 {
			failures = append(failures, "no member is the leader (an election in progress?)")
		}
		return members, nil, fmt.Errorf("%s %s unreachable: %s", what, addresses, strings.Join(failures, "; "))
	}
	c, err := Dial(ctx, best, db, tlsCfg, timeout)
	if err != nil {
		return members, nil, fmt.Errorf("%s %s unreachable: %s: %v", what, addresses, best, err)
	}
	return members, c, nil
}

// member reads endpoint's _Server row for db. m.Error is set when it cannot.
func member(ctx context.Context, endpoint, db string, tlsCfg *tls.Config, timeout time.Duration) (m Member, err error) {
	m = Member{Endpoint: endpoint}
	defer func() {
		if err != nil {
			m.Error = err.Error()
		}
	}()
	serverModel, err := serverdb.FullDatabaseModel()
	if err != nil {
		return m, err
	}
	c, err := dial(ctx, endpoint, serverModel, tlsCfg, timeout)
	if err != nil {
		return m, err
	}
	defer c.Close()
	rows, err := c.Select(serverdb.DatabaseTable, []ovsdb.Condition{ovsdb.NewCondition("name", ovsdb.ConditionEqual, db)},
		"model", "leader", "connected")
	if err != nil {
		return m, err
	}
	if len(rows) == 0 {
		return m, fmt.Errorf("serves no database %s", db)
	}
	m.Model, m.Leader, m.Connected = rows[0].String("model"), rows[0].Bool("leader"), rows[0].Bool("connected")
	return m, nil
}
