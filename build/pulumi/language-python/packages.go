package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// listPluginsScript prints, for every installed distribution that is a Pulumi package,
// its name, version and the pulumi-plugin.json at its top level (null when it has none).
// A Pulumi package is one with that file, or, for older packages, one named pulumi-*.
const listPluginsScript = `
import importlib.metadata, json, sys
seen, found = set(), []
for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower().replace("_", "-")
    if not name or name in seen:
        continue
    seen.add(name)
    plugin = None
    for f in dist.files or ():
        if len(f.parts) == 2 and f.name == "pulumi-plugin.json":
            plugin = json.loads(f.read_text())
            break
    if plugin is not None or name.startswith("pulumi-"):
        found.append({"name": name, "version": dist.version, "plugin": plugin})
json.dump(found, sys.stdout)
`

// Packages named pulumi-* that ship no plugin and predate pulumi-plugin.json.
var packagesWithoutPlugin = map[string]bool{"pulumi-policy": true, "pulumi-esc-sdk": true}

type installedPackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Plugin  *struct {
		Resource bool   `json:"resource"`
		Name     string `json:"name"`
		Version  string `json:"version"`
		Server   string `json:"server"`
	} `json:"plugin"`
}

// requiredPlugin is a resource plugin the program needs, as the engine names it.
type requiredPlugin struct {
	Name    string
	Version string // with a leading "v"
	Server  string
}

// parseInstalledPackages turns listPluginsScript's output into the plugins to load.
func parseInstalledPackages(out []byte) ([]requiredPlugin, error) {
	var pkgs []installedPackage
	if err := json.Unmarshal(out, &pkgs); err != nil {
		return nil, fmt.Errorf("reading the installed Pulumi packages: %w", err)
	}
	var plugins []requiredPlugin
	for _, pkg := range pkgs {
		if packagesWithoutPlugin[pkg.Name] {
			continue
		}
		var name, version, server string
		if pkg.Plugin != nil {
			if !pkg.Plugin.Resource {
				continue
			}
			name, version, server = pkg.Plugin.Name, pkg.Plugin.Version, pkg.Plugin.Server
		}
		if name == "" {
			name = strings.TrimPrefix(pkg.Name, "pulumi-")
		}
		if version == "" {
			v, err := pluginVersion(pkg.Version)
			if err != nil {
				// Like upstream: a package version with no plugin counterpart names no plugin.
				continue
			}
			version = v
		}
		if !strings.HasPrefix(version, "v") {
			version = "v" + version
		}
		plugins = append(plugins, requiredPlugin{Name: name, Version: version, Server: server})
	}
	return plugins, nil
}

var pep440 = regexp.MustCompile(`^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?$`)

// pluginVersion maps a Python package version (a subset of PEP 440) to the semantic
// version of the plugin released with it: 1.2 -> 1.2.0, 1.2.3a4 -> 1.2.3-alpha.4,
// 1.2.3rc4 -> 1.2.3-rc.4, 1.2.3.post4 -> 1.2.3+post4, 1.2.3.dev5 -> 1.2.3+dev5.
func pluginVersion(pyVersion string) (string, error) {
	m := pep440.FindStringSubmatch(pyVersion)
	if m == nil {
		return "", fmt.Errorf("unsupported package version %q", pyVersion)
	}
	release := strings.Split(m[1], ".")
	for len(release) < 3 {
		release = append(release, "0")
	}
	v := strings.Join(release, ".")
	switch m[2] {
	case "a":
		v += "-alpha." + m[3]
	case "b":
		v += "-beta." + m[3]
	case "rc":
		v += "-rc." + m[3]
	}
	build := ""
	if m[4] != "" {
		build += "post" + m[4]
	}
	if m[5] != "" {
		build += "dev" + m[5]
	}
	if build != "" {
		v += "+" + build
	}
	return v, nil
}
