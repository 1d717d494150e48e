package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A spec's name in the table is its text, which the next round's focus must match: the label list
// ginkgo appends is dropped whether it holds one label or several, and the text's own bracketed tags
// stay.
func TestParseJUnitNames(t *testing.T) {
	const report = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite>
<testcase name="[BeforeSuite]" status="passed"></testcase>
<testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance] [sig-network, Conformance]" status="passed" time="3"></testcase>
<testcase name="[It] [sig-network] Netpol API should support creating NetworkPolicy API operations [sig-network]" status="failed" time="1"><failure message="boom">x</failure></testcase>
<testcase name="[It] [sig-network] Netpol [Feature:SCTPConnectivity] a spec [Feature:NetworkPolicy] [sig-network, Feature:SCTPConnectivity]" status="skipped"><skipped message="skipped"></skipped></testcase>
</testsuite></testsuites>`
	p := filepath.Join(t.TempDir(), "junit.xml")
	if err := os.WriteFile(p, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := parseJUnit(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"[sig-network] Services should serve a basic endpoint from pods [Conformance]":  "passed",
		"[sig-network] Netpol API should support creating NetworkPolicy API operations": "failed",
	}
	if len(rs) != len(want) {
		t.Fatalf("results %+v, want %v", rs, want)
	}
	for _, r := range rs {
		if want[r.Name] != r.Status {
			t.Errorf("%q: %s, want %q", r.Name, r.Status, want[r.Name])
		}
	}
}
