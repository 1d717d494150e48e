package cni

import (
	"context"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// SupportedVersions returns the CNI spec versions dunlin-cni speaks.
func SupportedVersions() []string { return []string{"0.4.0", "1.0.0", "1.1.0"} }

// Main runs the plugin: skel parses CNI_* and the configuration, rejects unknown versions, and calls us.
func Main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return run("ADD", a) },
		Del:    func(a *skel.CmdArgs) error { return run("DEL", a) },
		Check:  func(a *skel.CmdArgs) error { return run("CHECK", a) },
		GC:     func(a *skel.CmdArgs) error { return run("GC", a) },
		Status: func(a *skel.CmdArgs) error { return run("STATUS", a) },
	}, version.PluginSupports(SupportedVersions()...), "dunlin-cni: Dunlin OVN network plugin (forwards to dunlin-node)")
}

func run(command string, a *skel.CmdArgs) error {
	conf, err := ParseNetConf(a.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot parse the network configuration", err.Error())
	}
	socket := conf.CNISocket
	if socket == "" {
		socket = DefaultSocket
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	out, err := Forward(ctx, socket, Request{
		Command:     command,
		ContainerID: a.ContainerID,
		Netns:       a.Netns,
		IfName:      a.IfName,
		Args:        a.Args,
		Path:        a.Path,
		Config:      a.StdinData,
	})
	if err != nil {
		return ErrorOf(err)
	}
	if len(out) > 0 {
		if _, err := os.Stdout.Write(out); err != nil {
			return types.NewError(types.ErrIOFailure, "write result", err.Error())
		}
	}
	return nil
}
