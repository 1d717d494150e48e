package ovsdbraw

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"time"
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

// Connect dials every endpoint of addresses, asks each about db, and returns what each said and a
// client connected to the member that can be written to: the RAFT leader of a clustered database, or
// a standalone server. The client is nil (and err says why, endpoint by endpoint) when none answers.
func Connect(ctx context.Context, what, addresses, db string, tlsCfg *tls.Config, timeout time.Duration) ([]Member, *Client, error) {
	eps := Endpoints(addresses)
	if len(eps) == 0 {
		return nil, nil, fmt.Errorf("%s: no address given", what)
	}
	var members []Member
	var best *Client
	var failures []string
	for _, ep := range eps {
		m := Member{Endpoint: ep}
		c, err := Dial(ctx, ep, tlsCfg, timeout)
		if err == nil {
			var rows []Row
			rows, err = c.Select("_Server", "Database", []any{Eq("name", db)}, "model", "leader", "connected")
			switch {
			case err != nil:
			case len(rows) == 0:
				err = fmt.Errorf("serves no database %s", db)
			default:
				m.Model, m.Leader, m.Connected = rows[0].String("model"), rows[0].Bool("leader"), rows[0].Bool("connected")
			}
		}
		if err != nil {
			if c != nil {
				c.Close()
			}
			m.Error = err.Error()
			failures = append(failures, fmt.Sprintf("%s: %v", ep, err))
			members = append(members, m)
			continue
		}
		members = append(members, m)
		if best == nil && m.Connected && (m.Leader || m.Model != "clustered") {
			best = c
		} else {
			c.Close()
		}
	}
	if best == nil {
		if len(failures) == 0 {
			failures = append(failures, "no member is the leader (an election in progress?)")
		}
		return members, nil, fmt.Errorf("%s %s unreachable: %s", what, addresses, strings.Join(failures, "; "))
	}
	return members, best, nil
}
