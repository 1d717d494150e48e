// Package ovsmodel holds libovsdb models generated from the Open vSwitch database schema
// (vswitch.ovsschema, OVS 3.1) that the node agent uses to configure the local OVS.
package ovsmodel

//go:generate go tool modelgen -extended -p ovsmodel -o . vswitch.ovsschema
