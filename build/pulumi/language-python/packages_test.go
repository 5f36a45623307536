package main

import (
	"reflect"
	"testing"
)

func TestPluginVersion(t *testing.T) {
	cases := map[string]string{
		"4.34.2":           "4.34.2",
		"3.0":              "3.0.0",
		"3":                "3.0.0",
		"1.2.3a4":          "1.2.3-alpha.4",
		"1.2.3b4":          "1.2.3-beta.4",
		"1.2.3rc4":         "1.2.3-rc.4",
		"1.2.3.post4":      "1.2.3+post4",
		"1.2.3.dev5":       "1.2.3+dev5",
		"1.2.3.post4.dev5": "1.2.3+post4dev5",
	}
	for in, want := range cases {
		got, err := pluginVersion(in)
		if err != nil || got != want {
			t.Errorf("pluginVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "1!2.0", "1.0x", "v1.0"} {
		if got, err := pluginVersion(bad); err == nil {
			t.Errorf("pluginVersion(%q) = %q, want an error", bad, got)
		}
	}
}

func TestParseInstalledPackages(t *testing.T) {
	// The shape listPluginsScript prints for this project's requirements.
	out := []byte(`[
		{"name": "pulumi-kubernetes", "version": "4.34.2",
		 "plugin": {"resource": true, "name": "kubernetes", "version": "4.34.2"}},
		{"name": "pulumi-command", "version": "1.2.1",
		 "plugin": {"resource": true, "name": "command", "version": "v1.2.1", "server": "https://example.test"}},
		{"name": "pulumi-nothing", "version": "1.0.0", "plugin": {"resource": false}},
		{"name": "pulumi-old", "version": "2.1rc3", "plugin": null},
		{"name": "pulumi-unparsable", "version": "2.1.x", "plugin": null},
		{"name": "pulumi-policy", "version": "1.0.0", "plugin": null}
	]`)
	got, err := parseInstalledPackages(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []requiredPlugin{
		{Name: "kubernetes", Version: "v4.34.2"},
		{Name: "command", Version: "v1.2.1", Server: "https://example.test"},
		{Name: "old", Version: "v2.1.0-rc.3"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if _, err := parseInstalledPackages([]byte("not json")); err == nil {
		t.Error("want an error for output that is not JSON")
	}
}
