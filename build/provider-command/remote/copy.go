package remote

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/pkg/sftp"
	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi-go-provider/infer/types"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
)

// CopyToRemote is `command:remote:CopyToRemote`.
type CopyToRemote struct{}

// CopyToRemoteInputs are named as pulumi-command names them.
type CopyToRemoteInputs struct {
	Connection *Connection          `pulumi:"connection"        provider:"secret"`
	Triggers   *[]any               `pulumi:"triggers,optional" provider:"replaceOnChanges"`
	Source     types.AssetOrArchive `pulumi:"source"`
	RemotePath string               `pulumi:"remotePath"`
}

// CopyToRemoteOutputs mirror the inputs.
type CopyToRemoteOutputs struct {
	CopyToRemoteInputs
}

// Annotate sets the token and the description that names this as a stand-in.
func (c *CopyToRemote) Annotate(a infer.Annotator) {
	a.SetToken("remote", "CopyToRemote")
	a.Describe(&c, "Copies a file asset, a text asset or a directory archive to a remote host over SFTP "+
		"(Space Harbor stand-in for pulumi-command 1.2.1).")
}

// Annotate describes the inputs.
func (c *CopyToRemoteInputs) Annotate(a infer.Annotator) {
	a.Describe(&c.Connection, "How to reach the host.")
	a.Describe(&c.Triggers, "Values whose change replaces the resource.")
	a.Describe(&c.Source, "A FileAsset, a StringAsset or a FileArchive (a directory, or a file copied as is).")
	a.Describe(&c.RemotePath, "The destination; missing parent directories are made.")
}

var (
	_ infer.CustomResource[CopyToRemoteInputs, CopyToRemoteOutputs] = (*CopyToRemote)(nil)
	_ infer.CustomCheck[CopyToRemoteInputs]                         = (*CopyToRemote)(nil)
	_ infer.CustomUpdate[CopyToRemoteInputs, CopyToRemoteOutputs]   = (*CopyToRemote)(nil)
)

// Check refuses a source this provider cannot copy, before anything is dialled.
func (*CopyToRemote) Check(ctx context.Context, req infer.CheckRequest) (infer.CheckResponse[CopyToRemoteInputs], error) {
	inputs, failures, err := infer.DefaultCheck[CopyToRemoteInputs](ctx, req.NewInputs)
	if err != nil {
		return infer.CheckResponse[CopyToRemoteInputs]{Inputs: inputs, Failures: failures}, err
	}
	asset, archive := inputs.Source.Asset, inputs.Source.Archive
	switch {
	case asset != nil && archive != nil:
		failures = append(failures, p.CheckFailure{Property: "source", Reason: "only one of asset or archive can be set"})
	case asset == nil && archive == nil:
		failures = append(failures, p.CheckFailure{Property: "source", Reason: "either asset or archive must be set"})
	case asset != nil && !asset.IsPath() && !asset.IsText():
		failures = append(failures, p.CheckFailure{Property: "source", Reason: "asset must be a FileAsset or a StringAsset"})
	case archive != nil && !archive.IsPath():
		failures = append(failures, p.CheckFailure{Property: "source", Reason: "archive must be a FileArchive"})
	}
	return infer.CheckResponse[CopyToRemoteInputs]{Inputs: inputs, Failures: failures}, nil
}

// Create copies the source.
func (*CopyToRemote) Create(ctx context.Context, req infer.CreateRequest[CopyToRemoteInputs]) (
	infer.CreateResponse[CopyToRemoteOutputs], error,
) {
	state := CopyToRemoteOutputs{req.Inputs}
	if req.DryRun {
		return infer.CreateResponse[CopyToRemoteOutputs]{Output: state}, nil
	}
	if err := copyToRemote(ctx, req.Inputs); err != nil {
		return infer.CreateResponse[CopyToRemoteOutputs]{Output: state}, err
	}
	id, err := resource.NewUniqueHex("", 8, 0)
	return infer.CreateResponse[CopyToRemoteOutputs]{ID: id, Output: state}, err
}

// Update copies again only when the source's content or the remote path changed.
func (*CopyToRemote) Update(ctx context.Context, req infer.UpdateRequest[CopyToRemoteInputs, CopyToRemoteOutputs]) (
	infer.UpdateResponse[CopyToRemoteOutputs], error,
) {
	state := CopyToRemoteOutputs{req.Inputs}
	if req.DryRun {
		return infer.UpdateResponse[CopyToRemoteOutputs]{Output: state}, nil
	}
	if sourceHash(req.Inputs) == sourceHash(req.State.CopyToRemoteInputs) && req.Inputs.RemotePath == req.State.RemotePath {
		return infer.UpdateResponse[CopyToRemoteOutputs]{Output: state}, nil
	}
	return infer.UpdateResponse[CopyToRemoteOutputs]{Output: state}, copyToRemote(ctx, req.Inputs)
}

// Delete is not implemented, as upstream: the copied file stays on the host.

func sourceHash(in CopyToRemoteInputs) string {
	if in.Source.Asset != nil {
		return in.Source.Asset.Hash
	}
	if in.Source.Archive != nil {
		return in.Source.Archive.Hash
	}
	return ""
}

func copyToRemote(ctx context.Context, in CopyToRemoteInputs) error {
	if in.Connection == nil {
		return fmt.Errorf("connection is required")
	}
	client, err := in.Connection.Dial(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	remote, err := sftp.NewClient(client)
	if err != nil {
		return err
	}
	defer remote.Close()

	if asset := in.Source.Asset; asset != nil && asset.IsText() {
		return writeRemoteFile(remote, in.RemotePath, strings.NewReader(asset.Text))
	}
	local := ""
	if in.Source.Asset != nil {
		local = in.Source.Asset.Path
	} else {
		local = in.Source.Archive.Path
	}
	info, err := os.Stat(local)
	if err != nil {
		return err
	}
	if info.IsDir() {
		return copyDir(remote, local, in.RemotePath)
	}
	dest := in.RemotePath
	if existing, err := statRemote(remote, dest); err != nil {
		return err
	} else if existing != nil && existing.IsDir() {
		dest = path.Join(dest, filepath.Base(local))
	}
	file, err := os.Open(local)
	if err != nil {
		return err
	}
	defer file.Close()
	return writeRemoteFile(remote, dest, file)
}

// statRemote is Stat with "does not exist" as (nil, nil).
func statRemote(remote *sftp.Client, name string) (fs.FileInfo, error) {
	info, err := remote.Stat(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("failed to stat remote path %s: %w", name, err)
	}
	if err != nil {
		return nil, nil
	}
	return info, nil
}

func writeRemoteFile(remote *sftp.Client, dest string, content interface{ Read([]byte) (int, error) }) error {
	if existing, err := statRemote(remote, dest); err != nil {
		return err
	} else if existing != nil && existing.IsDir() {
		return fmt.Errorf("remote path %s is a directory", dest)
	}
	if err := remote.MkdirAll(path.Dir(dest)); err != nil {
		return fmt.Errorf("failed to create parent directories for %s: %w", dest, err)
	}
	out, err := remote.Create(dest)
	if err != nil {
		return fmt.Errorf("failed to create remote file %s: %w", dest, err)
	}
	if _, err := out.ReadFrom(content); err != nil {
		out.Close()
		return fmt.Errorf("failed to write remote file %s: %w", dest, err)
	}
	return out.Close()
}

// copyDir copies a local directory as upstream does: `dir` into dest/dir, `dir/` into dest.
func copyDir(remote *sftp.Client, local, dest string) error {
	if !strings.HasSuffix(local, "/") {
		dest = path.Join(dest, filepath.Base(local))
	}
	return filepath.WalkDir(local, func(name string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(local, name)
		if err != nil {
			return err
		}
		target := path.Join(dest, filepath.ToSlash(rel))
		if entry.IsDir() {
			return remote.MkdirAll(target)
		}
		file, err := os.Open(name)
		if err != nil {
			return err
		}
		defer file.Close()
		return writeRemoteFile(remote, target, file)
	})
}
