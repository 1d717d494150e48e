package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator"
)

func BenchmarkProbeFloor(b *testing.B) {
	set := &serviceSet{}
	for i := range 5000 {
		name := fmt.Sprintf("svc-%05d", i)
		ip := addrAt(svcIPBase, i).String()
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: []corev1.ServicePort{{Name: "http", Protocol: "TCP", Port: 80}}}}
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name}, AddressType: "IPv4",
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}}}
		for j := range 3 {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{addrAt(epBase, 3*i+j).String()}})
		}
		set.svcs = append(set.svcs, &benchService{svc: svc, slice: sl})
	}
	dir := tempDir(b)
	mode := os.Getenv("PROBE")
	ovn, nb := startNB(b, dir+"/x")
	var w *lbWatch
	if mode != "nowatch" {
		w = newLBWatch(b, ovn.NBAddr, set.want(b))
	}
	var lbs []*nbmodel.LoadBalancer
	for _, bs := range set.svcs {
		lb, _ := bs.lb(bs.slice)
		lbs = append(lbs, lb)
	}
	ctx := context.Background()
	transact := func(ops []ovsdb.Operation) []ovsdb.OperationResult {
		t := time.Now()
		res, err := nb.Transact(ctx, ops...)
		if err == nil {
			_, err = ovsdb.CheckOperationResults(res, ops)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("txn %d ops %s", len(ops), time.Since(t))
		return res
	}
	start := time.Now()
	ops, _ := nb.Create(&nbmodel.LoadBalancerGroup{UUID: "grp", Name: translator.ClusterLBGroup})
	group := transact(ops)[0].UUID.GoUUID
	ops = ops[:0]
	var names []any
	for i, lb := range lbs {
		lb.UUID = fmt.Sprintf("lb%d", i)
		ins, _ := nb.Create(lb)
		ops = append(ops, ins...)
		mut := func(set []any) ovsdb.Operation {
			return ovsdb.Operation{Op: ovsdb.OperationMutate, Table: "Load_Balancer_Group",
				Where:     []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: group}}},
				Mutations: []ovsdb.Mutation{{Column: "load_balancer", Mutator: ovsdb.MutateOperationInsert, Value: ovsdb.OvsSet{GoSet: set}}}}
		}
		if mode == "onemutate" {
			names = append(names, ovsdb.UUID{GoUUID: lb.UUID})
			if len(ops) >= 999 {
				ops = append(ops, mut(names))
				names = nil
				transact(ops)
				ops = ops[:0]
			}
			continue
		}
		ops = append(ops, mut([]any{ovsdb.UUID{GoUUID: lb.UUID}}))
		if len(ops) >= 1000 {
			transact(ops)
			ops = ops[:0]
		}
	}
	if len(names) > 0 {
		ops = append(ops, ovsdb.Operation{Op: ovsdb.OperationMutate, Table: "Load_Balancer_Group",
			Where:     []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: group}}},
			Mutations: []ovsdb.Mutation{{Column: "load_balancer", Mutator: ovsdb.MutateOperationInsert, Value: ovsdb.OvsSet{GoSet: names}}}})
	}
	if len(ops) > 0 {
		transact(ops)
	}
	b.Logf("transactions done %s", time.Since(start))
	if w != nil {
		b.Logf("watch done %s", w.wait(b, time.Minute, nil).Sub(start))
	} else {
		for nb.Cache().Table("Load_Balancer").Len() < 5000 {
			time.Sleep(time.Millisecond)
		}
		b.Logf("writer cache done %s", time.Since(start))
	}
}
