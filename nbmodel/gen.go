// Package nbmodel holds the libovsdb models of the OVN northbound database (OVN 23.03, schema 7.0.0),
// generated from the schema file beside this one. Do not edit the generated files.
package nbmodel

//go:generate go tool modelgen -extended -p nbmodel -o . ovn-nb.ovsschema
