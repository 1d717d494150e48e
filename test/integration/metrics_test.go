package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape returns the controller's /metrics page.
func (c *cluster) scrape() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metrics+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// The metrics deploy/monitoring's alerts read, from a real leading controller: it says it leads and
// since when, exports every NB error reason at 0 before any error, and each node subnet's usage and
// capacity.
func TestMetricsServed(t *testing.T) {
	c := newCluster(t, "--leader-elect=true")
	c.createNode("n1")
	c.createPod("default", "p", "n1")
	want := []string{
		`dunlin_controller_is_leader 1`,
		`dunlin_controller_leadership_acquired_total 1`,
		`dunlin_nb_transaction_errors_total{reason="fenced"} 0`,
		`dunlin_nb_transaction_errors_total{reason="rejected"} 0`,
		`dunlin_ipam_node_pod_addresses_in_use{node="n1"} 1`,
		`dunlin_ipam_node_pod_addresses_capacity{node="n1"} 252`,
		`dunlin_ipam_node_subnets_in_use 1`,
		`dunlin_ipam_node_subnets_capacity 256`,
	}
	since := regexp.MustCompile(`(?m)^dunlin_controller_leader_since_timestamp_seconds (\S+)$`)
	var page string
	c.eventually(time.Minute, "the controller's metrics", func() error {
		var err error
		if page, err = c.scrape(); err != nil {
			return err
		}
		for _, w := range want {
			if !strings.Contains(page, "\n"+w+"\n") {
				return fmt.Errorf("no line %q", w)
			}
		}
		m := since.FindStringSubmatch(page)
		if m == nil {
			return fmt.Errorf("no dunlin_controller_leader_since_timestamp_seconds")
		}
		if v, err := strconv.ParseFloat(m[1], 64); err != nil || v < float64(time.Now().Add(-time.Hour).Unix()) {
			return fmt.Errorf("dunlin_controller_leader_since_timestamp_seconds %s, want about now", m[1])
		}
		return nil
	})
}
