package main

import (
	"testing"
	"time"
)

func TestRateLimit(t *testing.T) {
	for _, tc := range []struct {
		qps       float64
		burst     int
		wantQPS   float32
		wantBurst int
		wantErr   bool
	}{
		{qps: 200, burst: 400, wantQPS: 200, wantBurst: 400},
		{qps: -1, burst: 0, wantQPS: -1, wantBurst: 0}, // client-go: no rate limiter at all
		{qps: 0, burst: 400, wantErr: true},            // client-go would read 0 as its default of 5
		{qps: 50, burst: 0, wantErr: true},
	} {
		qps, burst, err := options{kubeAPIQPS: tc.qps, kubeAPIBurst: tc.burst}.rateLimit()
		if (err != nil) != tc.wantErr {
			t.Errorf("qps %v burst %d: error %v, want error %v", tc.qps, tc.burst, err, tc.wantErr)
			continue
		}
		if err == nil && (qps != tc.wantQPS || burst != tc.wantBurst) {
			t.Errorf("qps %v burst %d: got %v/%d, want %v/%d", tc.qps, tc.burst, qps, burst, tc.wantQPS, tc.wantBurst)
		}
	}
}

func TestGatewayFlags(t *testing.T) {
	base := options{clusterCIDR: "10.244.0.0/16", serviceCIDR: "10.96.0.0/16", sessionAffinity: "timeout", workers: 1, aclLogRate: 1,
		joinSubnet: "100.64.0.0/16", nodePortRange: "30000-32767", nodeSubnetSource: "auto"}
	cfg, err := base.config()
	if err != nil || cfg.JoinSubnet.String() != "100.64.0.0/16" || cfg.NodePortRange.Min != 30000 || cfg.NodePortRange.Max != 32767 {
		t.Fatalf("config %+v, %v", cfg, err)
	}
	for _, mutate := range []func(*options){
		func(o *options) { o.joinSubnet = "10.244.128.0/17" }, // inside the cluster CIDR
		func(o *options) { o.joinSubnet = "10.96.0.0/24" },    // inside the Service CIDR
		func(o *options) { o.joinSubnet = "fd98::/64" },
		func(o *options) { o.nodePortRange = "32767-30000" },
		func(o *options) { o.nodeSubnetSource = "podcidr" },
		func(o *options) { o.podCIDRWait = -time.Second },
	} {
		o := base
		mutate(&o)
		if _, err := o.config(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}
