package nbstore_test

import (
	"net/netip"
	"strconv"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
func itoa(i int) string                { return strconv.Itoa(i) }
