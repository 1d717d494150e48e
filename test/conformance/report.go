package main

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// result is one spec of the JUnit report.
type result struct {
	Name    string
	Status  string // passed, failed, skipped (focused out specs are left out)
	Message string
	Time    float64
}

type junitCase struct {
	Name    string  `xml:"name,attr"`
	Status  string  `xml:"status,attr"`
	Time    float64 `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
		Text    string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
	} `xml:"error"`
}

type junitSuites struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

// labels is the label list ginkgo appends to a spec's name in its JUnit report: "[sig-network,
// Conformance]", or "[sig-network]" alone (every upstream spec has its SIG's). The name less it is the
// spec's text, which a focus matches.
var labels = regexp.MustCompile(` \[[^\[\]]*\]$`)

// parseJUnit reads the specs that ran or skipped themselves; the ones the focus left out are dropped.
func parseJUnit(path string) ([]result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s junitSuites
	if err := xml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var rs []result
	for _, su := range s.Suites {
		for _, c := range su.Cases {
			if !strings.HasPrefix(c.Name, "[It]") {
				continue // the suite's setup and teardown nodes
			}
			r := result{Name: labels.ReplaceAllString(strings.TrimPrefix(c.Name, "[It] "), ""), Status: c.Status, Time: c.Time}
			switch {
			case c.Status == "interrupted" || c.Status == "aborted" || c.Status == "panicked" || c.Status == "timedout":
				// A spec cut short (the round ended because a daemon died) did not pass.
				r.Status, r.Message = "failed", c.Status
				if c.Failure != nil {
					r.Message += ": " + c.Failure.Message
				}
			case c.Failure != nil:
				r.Status, r.Message = "failed", c.Failure.Message
			case c.Error != nil:
				r.Status, r.Message = "failed", c.Error.Message
			case c.Skipped != nil:
				r.Message = c.Skipped.Message
			}
			// Specs the focus left out carry the bare message "skipped"; a spec that skips itself says why.
			if r.Status == "skipped" && (r.Message == "" || r.Message == "skipped") {
				continue
			}
			if r.Status == "pending" {
				continue
			}
			rs = append(rs, r)
		}
	}
	sortResults(rs)
	return rs, nil
}

func sortResults(rs []result) {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].Status != rs[j].Status {
			return rs[i].Status < rs[j].Status
		}
		return rs[i].Name < rs[j].Name
	})
}

func failed(rs []result) int {
	n := 0
	for _, r := range rs {
		if r.Status == "failed" {
			n++
		}
	}
	return n
}

// formatTable is the Markdown table of rs, with counts and run times.
func formatTable(rs []result, suite, total time.Duration) string {
	count := map[string]int{}
	for _, r := range rs {
		count[r.Status]++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d specs: %d passed, %d failed, %d skipped; e2e.test %s, total %s (cluster start included)\n\n",
		len(rs), count["passed"], count["failed"], count["skipped"], suite.Round(time.Second), total.Round(time.Second))
	b.WriteString("| result | spec | time | reason |\n|---|---|---|---|\n")
	for _, r := range rs {
		msg := strings.Join(strings.Fields(r.Message), " ")
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		fmt.Fprintf(&b, "| %s | %s | %.0fs | %s |\n", r.Status, strings.ReplaceAll(r.Name, "|", "\\|"), r.Time, strings.ReplaceAll(msg, "|", "\\|"))
	}
	return b.String()
}
