package harness

import "fmt"

// StopSB stops only the SB ovsdb-server, keeping its database, to simulate an SB outage: every
// ovn-controller then reports "not connected".
func (o *OVN) StopSB() error {
	if err := o.sb.Stop(); err != nil {
		return fmt.Errorf("stop SB: %w", err)
	}
	return nil
}
