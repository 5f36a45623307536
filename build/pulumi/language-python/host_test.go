package main

import (
	"errors"
	"os/exec"
	"reflect"
	"testing"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"github.com/pulumi/pulumi/sdk/v3/python/toolchain"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestExecArgs(t *testing.T) {
	req := &pulumirpc.RunRequest{
		MonitorAddress: "127.0.0.1:1",
		Project:        "space-harbor",
		Stack:          "dev",
		Pwd:            "/p",
		DryRun:         true,
		Parallel:       8,
		Organization:   "organization",
		Args:           []string{"extra"},
		Info:           &pulumirpc.ProgramInfo{RootDirectory: "/p", ProgramDirectory: "/p", EntryPoint: "."},
	}
	got := execArgs(req, "127.0.0.1:2", "")
	want := []string{
		"--monitor", "127.0.0.1:1", "--engine", "127.0.0.1:2", "--project", "space-harbor",
		"--root_directory", "/p", "--stack", "dev", "--pwd", "/p", "--dry_run", "true",
		"--parallel", "8", "--organization", "organization", ".", "extra",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestProgramEnv(t *testing.T) {
	got, err := programEnv(&pulumirpc.RunRequest{
		Config:           map[string]string{"space-harbor:key": "v", "space-harbor:token": "s"},
		ConfigSecretKeys: []string{"space-harbor:token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`PULUMI_CONFIG={"space-harbor:key":"v","space-harbor:token":"s"}`,
		`PULUMI_CONFIG_SECRET_KEYS=["space-harbor:token"]`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	got, err = programEnv(&pulumirpc.RunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"PULUMI_CONFIG={}", "PULUMI_CONFIG_SECRET_KEYS=[]"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRunResponse(t *testing.T) {
	exitWith := func(code string) error { return exec.Command("sh", "-c", "exit "+code).Run() }
	if r := runResponse(nil); r.Error != "" || r.Bail {
		t.Errorf("success: %+v", r)
	}
	if r := runResponse(exitWith("32")); r.Error != "" || !r.Bail {
		t.Errorf("exit 32 must bail quietly: %+v", r)
	}
	if r := runResponse(exitWith("3")); r.Error != "program exited with non-zero exit code: 3" || r.Bail {
		t.Errorf("exit 3: %+v", r)
	}
	if r := runResponse(errors.New("no such file")); r.Error == "" || r.Bail {
		t.Errorf("start failure: %+v", r)
	}
}

func TestPythonOptions(t *testing.T) {
	info := func(opts map[string]any) *pulumirpc.ProgramInfo {
		s, err := structpb.NewStruct(opts)
		if err != nil {
			t.Fatal(err)
		}
		return &pulumirpc.ProgramInfo{RootDirectory: "/p", ProgramDirectory: "/p", Options: s}
	}
	got, err := pythonOptions(info(map[string]any{"toolchain": "pip", "virtualenv": ".venv"}))
	if err != nil || got.Toolchain != toolchain.Pip || got.Virtualenv != ".venv" || got.Root != "/p" {
		t.Errorf("Pulumi.yaml's options: %+v, %v", got, err)
	}
	for _, bad := range []map[string]any{
		{"toolchain": "conda"}, {"virtualenv": 1.0}, {"typechecker": "mypy"},
	} {
		if _, err := pythonOptions(info(bad)); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}
