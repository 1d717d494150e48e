// Package translator is dunlin-controller: it watches Kubernetes objects and keeps the OVN northbound
// database equal to what they mean. Informers feed one work queue per kind; a worker reads the current
// objects, computes the desired rows with the pure functions of mapping.go, and hands them to the one
// generic nbstore, whose committer batches the writes of many keys into few transactions.
package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/translator/ipam"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Config is the controller's configuration.
type Config struct {
	ClusterCIDR      netip.Prefix
	NodeSubnetPrefix int
	ServiceCIDR      netip.Prefix
	// SessionAffinity is how ClientIP session affinity is done: AffinityTimeout or AffinityHash
	// (see ServiceEnv.AffinityByHash).
	SessionAffinity string
	// Workers per kind. Workers wait for their commit, so this also bounds how many keys share a
	// transaction.
	Workers int
	// ResyncPeriod is how often every object is reconciled again and orphans are collected.
	ResyncPeriod time.Duration
	// MaxTxnOps bounds the operations of one NB transaction.
	MaxTxnOps int
	// TxnTimeout bounds one NB transaction, so a dead database shows up as errors, not hangs.
	TxnTimeout time.Duration
	// Identity names this controller in the NB database's writer claim (see nbstore.Committer.Claim).
	Identity string
	// JoinSubnet links the cluster router (its first address) with the nodes' gateway routers.
	JoinSubnet netip.Prefix
	// NodePortRange is the range Service node ports must be in.
	NodePortRange PortRange
	// ACLLogRate bounds, in packets per second, the ACL log messages of each ACL (the meter's rate).
	ACLLogRate int
	// NodeSubnetSource says where node subnets come from when a node has no spec.podCIDRs yet:
	// SubnetSourceAuto, SubnetSourcePodCIDRs or SubnetSourceDunlin.
	NodeSubnetSource string
	// PodCIDRWait is how long SubnetSourceAuto lets a new node wait for spec.podCIDRs before Dunlin
	// allocates its subnet itself.
	PodCIDRWait time.Duration
}

// Node subnet sources (Config.NodeSubnetSource). spec.podCIDRs, once set, is always used: the node agent
// reads it too.
const (
	// SubnetSourceAuto: when some node has spec.podCIDRs (nodeipam runs), a node created less than
	// PodCIDRWait ago without them waits for them (nodeipam sets them moments after the node
	// registers); otherwise, and after that, the node gets a subnet from Dunlin.
	SubnetSourceAuto = "auto"
	// SubnetSourcePodCIDRs: a node without spec.podCIDRs waits for them, however long.
	SubnetSourcePodCIDRs = "pod-cidrs"
	// SubnetSourceDunlin: a node without spec.podCIDRs gets a subnet from Dunlin at once.
	SubnetSourceDunlin = "dunlin"
)

// DefaultConfig returns the defaults of the controller's flags.
func DefaultConfig() Config {
	return Config{
		ClusterCIDR:      netip.MustParsePrefix("10.244.0.0/16"),
		NodeSubnetPrefix: 24,
		ServiceCIDR:      netip.MustParsePrefix("10.96.0.0/16"),
		SessionAffinity:  AffinityTimeout,
		Workers:          32,
		ResyncPeriod:     10 * time.Minute,
		MaxTxnOps:        2000,
		TxnTimeout:       15 * time.Second,
		ACLLogRate:       20,
		JoinSubnet:       netip.MustParsePrefix("100.64.0.0/16"),
		NodePortRange:    DefaultNodePortRange(),
		NodeSubnetSource: SubnetSourceAuto,
		PodCIDRWait:      15 * time.Second,
	}
}

// Session affinity modes (Config.SessionAffinity).
const (
	AffinityTimeout = "timeout"
	AffinityHash    = "hash"
)

// Controller is dunlin-controller's translator.
type Controller struct {
	cfg       Config
	kube      kubernetes.Interface
	nb        client.Client
	store     *nbstore.Store
	committer *nbstore.Committer
	ipam      *ipam.Cluster
	recorder  record.EventRecorder
	metrics   *metrics

	factory    informers.SharedInformerFactory
	nodeLister corelisters.NodeLister
	podLister  corelisters.PodLister
	podIndexer cache.Indexer

	policyLister networkinglisters.NetworkPolicyLister
	nsLister     corelisters.NamespaceLister
	peers        *peerRegistry

	serviceLister corelisters.ServiceLister
	sliceIndexer  cache.Indexer
	// ranges are the addresses Service backends may have.
	ranges        atomic.Pointer[EndpointRanges]
	rangesPending atomic.Bool
	// nodeDependent holds the keys of Services whose rows change with the nodes (see requeueNodeDependent).
	nodeDependent sync.Map
	// switchNodes are the nodes whose switch this process has written.
	switchNodes sync.Map

	queues map[string]workqueue.TypedRateLimitingInterface[string]
	syncs  map[string]func(context.Context, string) error
	// observed holds, per kind/key, when a change was first seen and not yet committed.
	observed sync.Map
	ready    atomic.Bool
	marking  atomic.Bool // startMarkSynced is waiting for the queues to drain
	// stop ends Run with a cause (nbstore.ErrFenced).
	stop context.CancelCauseFunc
	// running counts the goroutines Run waits for: workers and the committer.
	running sync.WaitGroup

	// join holds the gateway routers' join switch addresses, by node.
	join *ipam.Keyed
	// gateways maps the nodes whose gateway router was written to their node IPv4 address.
	gateways sync.Map
	// gatewayProblems maps a node to the reason and message of the gateway warning last recorded for
	// it, so that a resync or an unrelated update does not repeat it.
	gatewayProblems sync.Map

	// nodeFeatures are the features each node's agent announced, as last synced.
	nodeFeatures sync.Map
	// unconfirmed holds pod keys (-> UID) whose address annotation write had an unknown outcome.
	unconfirmed sync.Map
	// addrWaiters are the pods refused an address their annotation claims, by that address.
	addrWaitersMu sync.Mutex
	addrWaiters   map[netip.Addr]map[string]bool
}

const podNodeIndex = "spec.nodeName"

// New wires a controller; Run starts it. nb must be connected with the model from NBModel.
func New(cfg Config, kube kubernetes.Interface, nb client.Client, recorder record.EventRecorder, reg prometheus.Registerer) (*Controller, error) {
	pool, err := ipam.NewCluster(cfg.ClusterCIDR, cfg.NodeSubnetPrefix)
	if err != nil {
		return nil, err
	}
	join, err := ipam.NewKeyed(cfg.JoinSubnet, ClusterJoinIP(cfg.JoinSubnet))
	if err != nil {
		return nil, fmt.Errorf("--join-subnet: %w", err)
	}
	dbModel, schema, err := NBModel()
	if err != nil {
		return nil, err
	}
	store, err := nbstore.New(nb, dbModel, schema, TableSpecs())
	if err != nil {
		return nil, err
	}
	if cfg.Identity == "" {
		cfg.Identity = "dunlin-controller"
	}
	c := &Controller{
		cfg:       cfg,
		kube:      kube,
		nb:        nb,
		store:     store,
		committer: nbstore.NewCommitter(nb, cfg.MaxTxnOps, cfg.TxnTimeout, nbstore.NewMetrics(reg)),
		ipam:      pool,
		join:      join,
		recorder:  recorder,
		factory:   informers.NewSharedInformerFactory(kube, 0),
		queues:    map[string]workqueue.TypedRateLimitingInterface[string]{},

		addrWaiters: map[netip.Addr]map[string]bool{},
		peers:       newPeerRegistry(),
	}
	pool.OnRelease(c.addressFreed)
	c.syncs = map[string]func(context.Context, string) error{
		KindCluster: c.syncCluster,
		KindNode:    c.syncNode,
		KindPod:     c.syncPod,
		KindService: c.syncService,
		KindGateway: c.syncGateway,

		KindPolicy:          c.syncPolicy,
		KindPolicyNamespace: c.syncPolicyNamespace,
		KindPolicyPeer:      c.syncPolicyPeer,
	}
	c.metrics = newMetrics(reg, c.ipam, kinds)
	for kind := range c.syncs {
		c.queues[kind] = workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](20*time.Millisecond, time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: strings.ToLower(kind)})
	}

	nodeInformer := c.factory.Core().V1().Nodes()
	podInformer := c.factory.Core().V1().Pods()
	c.nodeLister = nodeInformer.Lister()
	c.podLister = podInformer.Lister()
	c.podIndexer = podInformer.Informer().GetIndexer()
	if err := podInformer.Informer().AddIndexers(cache.Indexers{podNodeIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("pod index: %w", err)
	}
	if _, err := nodeInformer.Informer().AddEventHandler(c.handler(KindNode)); err != nil {
		return nil, err
	}
	if _, err := nodeInformer.Informer().AddEventHandler(c.gatewayHandler()); err != nil {
		return nil, err
	}
	if _, err := podInformer.Informer().AddEventHandler(c.handler(KindPod)); err != nil {
		return nil, err
	}

	serviceInformer := c.factory.Core().V1().Services()
	sliceInformer := c.factory.Discovery().V1().EndpointSlices()
	c.serviceLister = serviceInformer.Lister()
	c.sliceIndexer = sliceInformer.Informer().GetIndexer()
	if err := sliceInformer.Informer().AddIndexers(cache.Indexers{sliceServiceIndex: sliceServiceKey}); err != nil {
		return nil, fmt.Errorf("endpointslice index: %w", err)
	}
	if _, err := serviceInformer.Informer().AddEventHandler(c.handler(KindService)); err != nil {
		return nil, err
	}
	if _, err := sliceInformer.Informer().AddEventHandler(c.sliceHandler()); err != nil {
		return nil, err
	}
	if err := c.watchPolicies(); err != nil {
		return nil, err
	}
	// Node addresses and subnets bound which endpoint addresses are believable.
	if _, err := nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.rangesChanged() },
		UpdateFunc: func(old, obj any) { c.rangesChangedIf(old, obj) },
		DeleteFunc: func(any) { c.rangesChanged() },
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// handler enqueues the key of every change and notes when it was first observed.
func (c *Controller) handler(kind string) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			utilruntime.HandleError(err)
			return
		}
		c.observed.LoadOrStore(kind+"/"+key, time.Now())
		c.queues[kind].Add(key)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}
}

// Ready reports whether the startup sync has finished and NB is connected.
func (c *Controller) Ready() bool { return c.ready.Load() && nbstore.Connected(c.nb) }

// Run runs the controller until ctx ends, or until another controller claims the NB database (then it
// returns an error wrapping nbstore.ErrFenced).
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	c.stop = cancel
	// Return only once nothing of this controller writes any more: the caller may then close the NB
	// client or give up the lease.
	defer func() {
		cancel(nil)
		for _, q := range c.queues {
			q.ShutDown()
		}
		c.running.Wait()
		c.factory.Shutdown()
	}()
	if err := c.start(ctx); err != nil {
		return err
	}
	for kind, q := range c.queues {
		for range c.cfg.Workers {
			c.running.Add(1)
			go func() {
				defer c.running.Done()
				wait.UntilWithContext(ctx, func(ctx context.Context) {
					for c.processNext(ctx, kind, q) {
					}
				}, time.Second)
			}()
		}
	}
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		if c.committer.WaitFenced(ctx) == nil {
			klog.ErrorS(nbstore.ErrFenced, "Stopping: another dunlin-controller claimed the NB database")
			c.stop(nbstore.ErrFenced)
		}
	}()
	c.enqueueAll()
	c.startMarkSynced(ctx)
	c.ready.Store(true)
	klog.InfoS("Controller started", "clusterCIDR", c.cfg.ClusterCIDR, "nodeSubnetPrefix", c.cfg.NodeSubnetPrefix,
		"workersPerKind", c.cfg.Workers)

	resync := time.NewTicker(c.cfg.ResyncPeriod)
	defer resync.Stop()
	// Often enough that a RAFT failover costs little more than the election: keys that failed meanwhile
	// have backed off for seconds.
	connCheck := time.NewTicker(250 * time.Millisecond)
	defer connCheck.Stop()
	connected := true
	for {
		select {
		case <-ctx.Done():
			if err := context.Cause(ctx); errors.Is(err, nbstore.ErrFenced) {
				return err
			}
			return nil
		case <-resync.C:
			c.enqueueAll()
			c.startMarkSynced(ctx)
		case <-connCheck.C:
			// After NB comes back, retry everything at once rather than after each key's backoff.
			now := nbstore.Connected(c.nb)
			if now && !connected {
				klog.InfoS("NB connection restored, reconciling everything")
				c.enqueueAll()
			}
			connected = now
		}
	}
}

// startMarkSynced records in NB (nbstore.SyncedKey) when the work queues have drained after a full
// reconcile, so that operators see when the controller last had every object in NB. Keys waiting to be
// retried after an error do not count as queued.
func (c *Controller) startMarkSynced(ctx context.Context) {
	if !c.marking.CompareAndSwap(false, true) {
		return // the previous pass has not drained yet
	}
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		defer c.marking.Store(false)
		_ = wait.PollUntilContextCancel(ctx, time.Second, false, func(ctx context.Context) (bool, error) {
			for _, q := range c.queues {
				if q.Len() > 0 {
					return false, nil
				}
			}
			if err := c.committer.MarkSynced(ctx, time.Now()); err != nil {
				klog.V(2).InfoS("Cannot record the sync time yet", "reason", err)
				return false, nil
			}
			return true, nil
		})
	}()
}

// start brings the controller to the point where workers may run: informers synced, the NB database
// claimed, the address bookkeeping rebuilt from what is persisted, the cluster rows written.
func (c *Controller) start(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	for typ, ok := range c.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer cache for %v did not sync", typ)
		}
	}
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		c.committer.Run(ctx)
	}()
	// Only one controller may write: claiming also waits until the cache holds whatever the previous
	// leader committed, so nothing it wrote is written again, and the rebuild below reads it.
	if err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		err := c.committer.Claim(ctx, c.cfg.Identity)
		if err != nil {
			klog.ErrorS(err, "Cannot claim the NB database yet, retrying")
		}
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("claim the NB database: %w", context.Cause(ctx))
	}
	// Rebuild address bookkeeping from what is persisted before any worker may allocate.
	if err := c.rebuildIPAM(); err != nil {
		return err
	}
	if err := c.rebuildJoin(); err != nil {
		return err
	}
	if err := c.registerPeers(); err != nil {
		return err
	}
	// The cluster rows (the router, the load balancer group) are parents of every node's and Service's
	// rows: write them first so the first syncs do not wait for them. Failure is retried by the queue.
	if err := c.syncCluster(ctx, ""); err != nil {
		klog.ErrorS(err, "Cannot write the cluster rows yet, will retry")
	}
	return nil
}

// enqueueAll queues every object and every owner found in NB, so rows whose object is gone are
// collected by the same sync that writes them.
func (c *Controller) enqueueAll() {
	c.queues[KindCluster].Add("dunlin")
	nodes, _ := c.nodeLister.List(labels.Everything())
	for _, n := range nodes {
		c.queues[KindNode].Add(n.Name)
		c.queues[KindGateway].Add(n.Name)
	}
	pods, _ := c.podLister.List(labels.Everything())
	for _, p := range pods {
		c.queues[KindPod].Add(p.Namespace + "/" + p.Name)
	}
	services, _ := c.serviceLister.List(labels.Everything())
	for _, s := range services {
		c.queues[KindService].Add(s.Namespace + "/" + s.Name)
	}
	// A peer is queued when its users change, and registerPeers records every user before the first
	// sync: an address set not in NB yet (a cold start into an empty NB) is found by no other path.
	c.queuePeers(c.peers.hashes())
	owners, err := c.store.Owners()
	if err != nil {
		klog.ErrorS(err, "Cannot list NB owners")
		return
	}
	for owner := range owners {
		kind, key, ok := strings.Cut(owner, "/")
		if q, known := c.queues[kind]; ok && known {
			q.Add(key)
		}
	}
}

func (c *Controller) processNext(ctx context.Context, kind string, q workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	start := time.Now()
	err := c.syncs[kind](ctx, key)
	c.metrics.reconcile.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		q.Forget(key)
		if t, ok := c.observed.LoadAndDelete(kind + "/" + key); ok {
			c.metrics.programming.WithLabelValues(kind).Observe(time.Since(t.(time.Time)).Seconds())
		}
	case errors.Is(err, errWait):
		// Waiting on another object (a pod on a node without a subnet yet): not a failure.
		klog.V(4).InfoS("Waiting", "kind", kind, "key", key, "reason", err)
		q.AddRateLimited(key)
	case errors.As(err, new(*nbstore.StaleError)), errors.Is(err, nbstore.ErrReplan):
		// A row the plan wrote to was deleted meanwhile (a node switch, say): plan again at once.
		klog.V(2).InfoS("Plan was stale, planning again", "kind", kind, "key", key, "reason", err)
		q.AddRateLimited(key)
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		// Stopping (SIGTERM, lost lease) mid-reconcile: the next leader reconciles everything anyway.
		klog.V(2).InfoS("Reconcile interrupted by shutdown", "kind", kind, "key", key)
	case errors.Is(err, nbstore.ErrFenced):
		klog.ErrorS(err, "Stopping: another dunlin-controller writes the NB database now", "kind", kind, "key", key)
		c.stop(err)
	default:
		klog.ErrorS(err, "Reconcile failed, will retry", "kind", kind, "key", key, "retries", q.NumRequeues(key))
		q.AddRateLimited(key)
	}
	return true
}

// errWait marks a sync that cannot finish until another object converges.
var errWait = errors.New("waiting")

// apply plans and commits the desired rows of owner.
func (c *Controller) apply(ctx context.Context, owner string, desired nbstore.Desired) error {
	_, err := c.applyCount(ctx, owner, desired)
	return err
}

// applyCount is apply, returning how many operations it committed.
func (c *Controller) applyCount(ctx context.Context, owner string, desired nbstore.Desired) (int, error) {
	txn, err := c.committer.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("plan NB rows of %s: %w", owner, err)
	}
	if err := c.store.Plan(txn, owner, desired); err != nil {
		if errors.Is(err, nbstore.ErrParentMissing) {
			return 0, fmt.Errorf("%w: %v", errWait, err)
		}
		return 0, fmt.Errorf("plan NB rows of %s: %w", owner, err)
	}
	if err := c.committer.Commit(ctx, txn); err != nil {
		return 0, fmt.Errorf("commit NB rows of %s: %w", owner, err)
	}
	return txn.Len(), nil
}

// syncCluster keeps the cluster-wide rows.
func (c *Controller) syncCluster(ctx context.Context, _ string) error {
	rows := append(ClusterRows(), GatewayClusterRows(c.gatewayEnv())...)
	rows = append(rows, ClusterPolicyRows(c.managementIPs(), c.cfg.ACLLogRate)...)
	return c.apply(ctx, ClusterOwner, nbstore.Rows(rows...))
}
