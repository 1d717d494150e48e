package translator

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// NetworkPolicy: the loop around the pure mapping of policymapping.go. Three kinds of owner, each with
// its queue: a policy (its port group, ACLs, named-port sets), a namespace (its default deny) and a
// peer (the address set identical selectors share). A pod's change queues only what it can change: the
// policies and default deny of its namespace, and the peers whose selectors it matches before or after.

// watchPolicies adds the informers and handlers of NetworkPolicy.
func (c *Controller) watchPolicies() error {
	policyInformer := c.factory.Networking().V1().NetworkPolicies()
	nsInformer := c.factory.Core().V1().Namespaces()
	c.policyLister = policyInformer.Lister()
	c.nsLister = nsInformer.Lister()
	if _, err := policyInformer.Informer().AddEventHandler(c.handler(KindPolicy)); err != nil {
		return err
	}
	if _, err := nsInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.namespaceChanged(nil, obj) },
		UpdateFunc: c.namespaceChanged,
		DeleteFunc: func(obj any) { c.namespaceChanged(obj, nil) },
	}); err != nil {
		return err
	}
	_, err := c.factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.podChangedForPolicies(nil, obj) },
		UpdateFunc: c.podChangedForPolicies,
		DeleteFunc: func(obj any) { c.podChangedForPolicies(obj, nil) },
	})
	return err
}

// registerPeers records the peers of every policy, before any peer is synced: a peer's address set is
// deleted when no policy uses it, so the registry must be complete first.
func (c *Controller) registerPeers() error {
	policies, err := c.policyLister.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, np := range policies {
		peers, _ := PolicyPeers(np)
		c.peers.set(np.Namespace+"/"+np.Name, peers, EgressNamedPorts(np), EgressNamedPortsAnyDest(np))
	}
	return nil
}

// syncPolicy keeps a NetworkPolicy's port group, ACLs and named-port address sets.
func (c *Controller) syncPolicy(ctx context.Context, key string) error {
	owner := Owner(KindPolicy, key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	c.queues[KindPolicyNamespace].Add(ns)
	np, err := c.policyLister.NetworkPolicies(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.queuePeers(c.peers.set(key, nil, false, false))
		return c.apply(ctx, owner, nbstore.Desired{})
	}
	if err != nil {
		return err
	}
	peers, problems := PolicyPeers(np)
	c.queuePeers(c.peers.set(key, peers, EgressNamedPorts(np), EgressNamedPortsAnyDest(np)))
	rows, more := PolicyRows(np, c.policyEnv(ns))
	for _, p := range append(problems, more...) {
		c.warn(np, p.Reason, "%s", p.Message)
	}
	if err := c.apply(ctx, owner, nbstore.Rows(rows...)); err != nil {
		c.warnNB(np, err)
		return err
	}
	return nil
}

// syncPolicyNamespace keeps a namespace's default deny: the pods some policy isolates, per direction.
func (c *Controller) syncPolicyNamespace(ctx context.Context, ns string) error {
	owner := Owner(KindPolicyNamespace, ns)
	policies, err := c.policyLister.NetworkPolicies(ns).List(labels.Everything())
	if err != nil {
		return err
	}
	env := c.policyEnv(ns)
	return c.apply(ctx, owner, nbstore.Rows(NamespaceIsolationRows(ns, policies, env.Pods, env.Logging)...))
}

// syncPolicyPeer keeps the address set of a peer: the addresses of the pods it matches, while a policy
// uses it.
func (c *Controller) syncPolicyPeer(ctx context.Context, hash string) error {
	peer, ok := c.peers.get(hash)
	if !ok {
		return c.apply(ctx, Owner(KindPolicyPeer, hash), nbstore.Desired{})
	}
	var addrs []netip.Addr
	for _, p := range c.peerPods(peer) {
		if p.Addr.IsValid() {
			addrs = append(addrs, p.Addr)
		}
	}
	return c.apply(ctx, peer.Owner(), nbstore.Rows(PeerRows(peer, addrs)...))
}

// policyEnv is what the policies of namespace ns are mapped with.
func (c *Controller) policyEnv(ns string) PolicyEnv {
	env := PolicyEnv{Pods: c.networkedPods(ns), PeerPods: c.peerPods, PodNetwork: c.cfg.ClusterCIDR}
	if n, err := c.nsLister.Get(ns); err == nil {
		env.Logging = n.Annotations[ACLLoggingAnnotation]
	}
	return env
}

// networkedPods are the pods of ns that have (or will have) a logical port, with their addresses.
func (c *Controller) networkedPods(ns string) []PolicyPod {
	objs, _ := c.podIndexer.ByIndex(cache.NamespaceIndex, ns)
	out := make([]PolicyPod, 0, len(objs))
	for _, o := range objs {
		p := o.(*corev1.Pod)
		if !wantsNetwork(p) {
			continue
		}
		pp := PolicyPod{Pod: p}
		if info, err := podAnnotation(p); err == nil && info != nil {
			v4, _ := info.IPv4()
			pp.Addr = v4.Addr()
		}
		out = append(out, pp)
	}
	slices.SortFunc(out, func(a, b PolicyPod) int {
		if a.Pod.Name < b.Pod.Name {
			return -1
		}
		return 1
	})
	return out
}

// peerPods are the networked pods a peer matches.
func (c *Controller) peerPods(peer PolicyPeer) []PolicyPod {
	var namespaces []string
	if peer.Namespaces == nil {
		namespaces = []string{peer.Namespace}
	} else {
		all, _ := c.nsLister.List(peer.Namespaces)
		for _, n := range all {
			namespaces = append(namespaces, n.Name)
		}
		slices.Sort(namespaces)
	}
	var out []PolicyPod
	for _, ns := range namespaces {
		for _, p := range c.networkedPods(ns) {
			if peer.Pods.Matches(labels.Set(p.Pod.Labels)) {
				out = append(out, p)
			}
		}
	}
	return out
}

func (c *Controller) queuePeers(hashes []string) {
	for _, h := range hashes {
		c.queues[KindPolicyPeer].Add(h)
	}
}

// queuePoliciesOf queues the policies and the default deny of namespace ns, when it has policies.
func (c *Controller) queuePoliciesOf(ns string) {
	policies, _ := c.policyLister.NetworkPolicies(ns).List(labels.Everything())
	for _, np := range policies {
		c.queues[KindPolicy].Add(ns + "/" + np.Name)
	}
	if len(policies) > 0 {
		c.queues[KindPolicyNamespace].Add(ns)
	}
}

// podChangedForPolicies queues what a pod's change concerns: its namespace's policies and default deny
// when its labels, address, ports or existence changed, and the peers it matches before or after.
func (c *Controller) podChangedForPolicies(oldObj, newObj any) {
	oldPod, newPod := podOf(oldObj), podOf(newObj)
	if oldPod != nil && newPod != nil && !policyRelevantChange(oldPod, newPod) {
		return
	}
	for _, p := range []*corev1.Pod{oldPod, newPod} {
		if p == nil {
			continue
		}
		c.queuePoliciesOf(p.Namespace)
		var nsLabels labels.Set
		if n, err := c.nsLister.Get(p.Namespace); err == nil {
			nsLabels = n.Labels
		}
		hashes, users := c.peers.matching(p, nsLabels)
		c.queuePeers(hashes)
		for _, u := range users {
			c.queues[KindPolicy].Add(u)
		}
	}
}

func podOf(obj any) *corev1.Pod {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, _ := obj.(*corev1.Pod)
	return p
}

// policyRelevantChange is false for pod updates NetworkPolicy does not care about (status heartbeats).
func policyRelevantChange(a, b *corev1.Pod) bool {
	return !maps.Equal(a.Labels, b.Labels) ||
		a.Annotations[annotations.PodNetwork] != b.Annotations[annotations.PodNetwork] ||
		wantsNetwork(a) != wantsNetwork(b) || a.Spec.NodeName != b.Spec.NodeName ||
		!slices.EqualFunc(a.Spec.Containers, b.Spec.Containers, func(x, y corev1.Container) bool {
			return slices.Equal(x.Ports, y.Ports)
		})
}

// namespaceChanged queues, on a namespace's label change, the peers that select namespaces, and on a
// change of its ACL logging annotation, its policies and default deny.
func (c *Controller) namespaceChanged(oldObj, newObj any) {
	nsOf := func(obj any) *corev1.Namespace {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		n, _ := obj.(*corev1.Namespace)
		return n
	}
	o, n := nsOf(oldObj), nsOf(newObj)
	if o != nil && n != nil && maps.Equal(o.Labels, n.Labels) &&
		o.Annotations[ACLLoggingAnnotation] == n.Annotations[ACLLoggingAnnotation] {
		return
	}
	name := ""
	for _, x := range []*corev1.Namespace{o, n} {
		if x != nil {
			name = x.Name
		}
	}
	c.queuePoliciesOf(name)
	hashes, users := c.peers.selectingNamespaces()
	c.queuePeers(hashes)
	for _, u := range users {
		c.queues[KindPolicy].Add(u)
	}
}

// managementIPs are the management port addresses of the nodes that have a subnet.
func (c *Controller) managementIPs() []netip.Addr {
	var out []netip.Addr
	for _, n := range c.nodesWithSwitch() {
		if s, ok := c.ipam.NodeSubnet(n); ok {
			out = append(out, conventions.ManagementIP(s))
		}
	}
	return out
}

// peerRegistry knows which policies use which peers: a peer's address set lives while one does.
type peerRegistry struct {
	mu       sync.Mutex
	peers    map[string]*peerEntry // by hash
	byPolicy map[string][]string   // policy key -> peer hashes
	// anyNamed are policies whose egress named ports apply to every destination: any pod concerns them.
	anyNamed map[string]bool
}

type peerEntry struct {
	peer  PolicyPeer
	users map[string]bool
	// named are the users that resolve egress named ports against the peer's pods.
	named map[string]bool
}

func newPeerRegistry() *peerRegistry {
	return &peerRegistry{peers: map[string]*peerEntry{}, byPolicy: map[string][]string{}, anyNamed: map[string]bool{}}
}

// set records the peers policy uses and returns the peers whose users changed. egressNamed: its egress
// named ports resolve against its peers' pods; anyDest: also against every pod (a rule without peers).
func (r *peerRegistry) set(policy string, peers []PolicyPeer, egressNamed, anyDest bool) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := map[string]bool{}
	for _, h := range r.byPolicy[policy] {
		if e := r.peers[h]; e != nil {
			delete(e.users, policy)
			delete(e.named, policy)
			if len(e.users) == 0 {
				delete(r.peers, h)
			}
		}
		changed[h] = true
	}
	delete(r.byPolicy, policy)
	delete(r.anyNamed, policy)
	for _, p := range peers {
		h := p.Hash()
		e := r.peers[h]
		if e == nil {
			e = &peerEntry{peer: p, users: map[string]bool{}, named: map[string]bool{}}
			r.peers[h] = e
		}
		if !e.users[policy] {
			changed[h] = !changed[h] // a peer used before and after is unchanged
		}
		e.users[policy] = true
		if egressNamed {
			e.named[policy] = true
		}
		r.byPolicy[policy] = append(r.byPolicy[policy], h)
	}
	if anyDest {
		r.anyNamed[policy] = true
	}
	var out []string
	for h, c := range changed {
		if c {
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return out
}

// hashes are the peers some policy uses.
func (r *peerRegistry) hashes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.peers))
}

func (r *peerRegistry) get(hash string) (PolicyPeer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.peers[hash]
	if !ok {
		return PolicyPeer{}, false
	}
	return e.peer, true
}

// matching returns the peers pod matches, and the policies whose egress named ports it concerns.
func (r *peerRegistry) matching(pod *corev1.Pod, nsLabels labels.Set) (hashes, users []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h, e := range r.peers {
		if e.peer.Matches(pod, nsLabels) {
			hashes = append(hashes, h)
			for u := range e.named {
				users = append(users, u)
			}
		}
	}
	for u := range r.anyNamed {
		users = append(users, u)
	}
	return hashes, users
}

// selectingNamespaces returns the peers that select namespaces by label, and their users with egress
// named ports.
func (r *peerRegistry) selectingNamespaces() (hashes, users []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h, e := range r.peers {
		if e.peer.MatchesNamespaces() {
			hashes = append(hashes, h)
			for u := range e.named {
				users = append(users, u)
			}
		}
	}
	return hashes, users
}
