package translator

import (
	"context"

	corev1 "k8s.io/api/core/v1"
)

// Hooks for the sync tests: they drive one sync at a time instead of running the workers.

func (c *Controller) Start(ctx context.Context) error { return c.start(ctx) }

func (c *Controller) SyncPod(ctx context.Context, key string) error { return c.syncPod(ctx, key) }

func (c *Controller) SyncNode(ctx context.Context, name string) error { return c.syncNode(ctx, name) }

// CachedPod is the pod as the controller's informer sees it.
func (c *Controller) CachedPod(namespace, name string) (*corev1.Pod, error) {
	return c.podLister.Pods(namespace).Get(name)
}

// CachedNode is the node as the controller's informer sees it.
func (c *Controller) CachedNode(name string) (*corev1.Node, error) { return c.nodeLister.Get(name) }

// DrainPodQueue takes every key waiting in the pod queue.
func (c *Controller) DrainPodQueue() []string {
	q := c.queues[KindPod]
	var keys []string
	for q.Len() > 0 {
		k, _ := q.Get()
		q.Done(k)
		q.Forget(k)
		keys = append(keys, k)
	}
	return keys
}
