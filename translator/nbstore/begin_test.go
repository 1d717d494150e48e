package nbstore_test

import (
	"context"

	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// begin starts a transaction as the controller does.
func begin(ctx context.Context, c *nbstore.Committer) (*nbstore.Txn, error) { return c.Begin(ctx) }
