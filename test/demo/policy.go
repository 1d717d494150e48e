package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// letterLabel tells a pod's letter (node1-a: a), so a policy can select the "a" pods on every node.
const letterLabel = "letter"

// policies shows NetworkPolicy: the namespace's pods isolated by a default deny, then one policy that
// lets the "a" pods in, with the connectivity matrix after each step and the ACLs that do it.
func (d *demo) policies(ctx context.Context) error {
	heading("NetworkPolicy: a default deny for namespace " + namespace + ", then an allow for the a pods")
	steps := []struct {
		policy *networkingv1.NetworkPolicy
		group  string // the port group whose ACLs to show
		allow  func(src, dst *pod) bool
	}{{
		policy: &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "deny-all"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		group: "deny_in." + namespace,
		allow: func(src, dst *pod) bool { return src == dst }, // a pod reaching its own IP never leaves it
	}, {
		policy: &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "allow-from-a"},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{letterLabel: "a"}}}},
			}}}},
		group: "np." + namespace + ".allow_from_a",
		allow: func(src, dst *pod) bool { return src == dst || letter(src) == "a" },
	}}
	for _, st := range steps {
		np := st.policy
		fmt.Printf("\n$ kubectl apply -f - # NetworkPolicy %s/%s: %s\n", np.Namespace, np.Name, describePolicy(np))
		if _, err := d.cluster.Kube.Client.NetworkingV1().NetworkPolicies(namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create NetworkPolicy %s: %w", np.Name, err)
		}
		err := timed("Waiting for the port groups in NB and every chassis to have the flows (ovn-nbctl --wait=hv sync)", func() error {
			return d.waitFor(ctx, runningTimeout, func() error { return d.policyInNB(st.group) }, func(err error) error { return err })
		})
		if err != nil {
			return err
		}
		if err := d.runNBCtl("acl-list", st.group); err != nil {
			return err
		}
		results := d.probeHTTP(ctx)
		fmt.Printf("\nHTTP with policy %s: ok = answered, -- = dropped by the policy (as expected); rows: source pod.\n", np.Name)
		printMatrixMarks("from \\ to", podRows(d.pods, func(src, dst *pod) error { return results[pair{src, dst}] }), d.pods, "--")
		var wrong []string
		for pr, err := range results {
			if want := st.allow(pr.src, pr.dst); want != (err == nil) {
				wrong = append(wrong, fmt.Sprintf("policy %s: %s -> %s: allowed=%v, want %v (%v)", np.Name, pr.src.name, pr.dst.name, err == nil, want, err))
			}
		}
		fmt.Printf("  %d of %d pairs as the policies say\n", len(results)-len(wrong), len(results))
		d.failures = append(d.failures, wrong...)
	}
	// Leave the namespace open again (with -keep, for whoever explores it next).
	for _, st := range steps {
		if err := d.cluster.Kube.Client.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, st.policy.Name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete NetworkPolicy %s: %w", st.policy.Name, err)
		}
	}
	fmt.Println("\nDeleted both policies: the namespace is open again.")
	return nil
}

func letter(p *pod) string { return p.name[len(p.name)-1:] }

func describePolicy(np *networkingv1.NetworkPolicy) string {
	if len(np.Spec.Ingress) == 0 {
		return "every pod of the namespace, no ingress allowed"
	}
	return "every pod of the namespace, ingress allowed from pods labelled " + letterLabel + "=a"
}

// policyInNB waits until the port group holds every demo pod, then until every chassis has the flows.
func (d *demo) policyInNB(group string) error {
	ports, err := d.cluster.OVN.NBCtl("--bare", "--columns=ports", "find", "Port_Group", "name="+group)
	if err != nil {
		return err
	}
	if n := len(strings.Fields(ports)); n != len(d.pods) {
		return fmt.Errorf("port group %s has %d of %d pods", group, n, len(d.pods))
	}
	// Up to harness.DatapathTimeout, naming a dead daemon rather than timing out.
	return d.cluster.WaitDatapath(context.Background())
}

// probeHTTP gets every pod's name from every pod; nil is an answer.
func (d *demo) probeHTTP(ctx context.Context) map[pair]error {
	results := map[pair]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, probeAtOnce)
	for _, src := range d.pods {
		for _, dst := range d.pods {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				got, err := httpGet(ctx, src.sb, net.JoinHostPort(dst.sb.IP, fmt.Sprint(podPort)))
				if err == nil && got != dst.name {
					err = fmt.Errorf("answered %q", got)
				}
				mu.Lock()
				results[pair{src, dst}] = err
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return results
}
