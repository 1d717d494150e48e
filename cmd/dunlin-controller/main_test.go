package main

import "testing"

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
