// Command gen writes the two files the provider binary embeds: the package schema
// stamped with the provider's version, and the terraform mapping, both compacted.
//
// Usage: gen VERSION SOURCE_DIR DEST_DIR
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

func compact(src string, edit func(map[string]any)) ([]byte, error) {
	raw, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	edit(doc)
	return json.Marshal(doc)
}

func run(version, srcDir, destDir string) error {
	schema, err := compact(filepath.Join(srcDir, "schema.json"), func(doc map[string]any) {
		doc["version"] = version
	})
	if err != nil {
		return err
	}
	mapping, err := compact(filepath.Join(srcDir, "terraform-mapping.json"), func(map[string]any) {})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(destDir, "schema-embed.json"), schema, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(destDir, "terraform-mapping-embed.json"), mapping, 0o644)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: gen VERSION SOURCE_DIR DEST_DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
