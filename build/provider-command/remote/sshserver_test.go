package remote

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// testServer is an SSH server on 127.0.0.1 for the tests: it runs exec requests with
// /bin/sh (with the env requests it accepted), serves SFTP, and forwards direct-tcpip
// channels, so it can be a node or a bastion. It records what it saw.
type testServer struct {
	addr    string
	hostKey ssh.PublicKey
	mu      sync.Mutex
	execs   []string
	envs    map[string]string
	forward []string
}

// newKey makes an ed25519 key pair: the signer, and the public key in authorized_keys form.
func newKey(t *testing.T) (ssh.Signer, string, []byte) {
	t.Helper()
	public, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(private)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(private, "")
	if err != nil {
		t.Fatal(err)
	}
	sshPublic, err := ssh.NewPublicKey(public)
	if err != nil {
		t.Fatal(err)
	}
	return signer, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPublic))), pem.EncodeToMemory(block)
}

// startServer serves SSH for clients holding clientKey (authorized_keys form).
func startServer(t *testing.T, clientKey string) *testServer {
	t.Helper()
	hostSigner, _, _ := newKey(t)
	authorized, _, _, _, err := ssh.ParseAuthorizedKey([]byte(clientKey))
	if err != nil {
		t.Fatal(err)
	}
	config := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), authorized.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	config.AddHostKey(hostSigner)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	server := &testServer{addr: listener.Addr().String(), hostKey: hostSigner.PublicKey(), envs: map[string]string{}}
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go server.serve(conn, config)
		}
	}()
	return server
}

func (s *testServer) pin() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.hostKey)))
}

func (s *testServer) hostPort(t *testing.T) (string, float64) {
	host, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return host, float64(n)
}

func (s *testServer) serve(conn net.Conn, config *ssh.ServerConfig) {
	_, channels, requests, err := ssh.NewServerConn(conn, config)
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(requests)
	for newChannel := range channels {
		switch newChannel.ChannelType() {
		case "session":
			channel, reqs, err := newChannel.Accept()
			if err != nil {
				continue
			}
			go s.session(channel, reqs)
		case "direct-tcpip":
			s.directTCPIP(newChannel)
		default:
			_ = newChannel.Reject(ssh.UnknownChannelType, "not served")
		}
	}
}

func (s *testServer) directTCPIP(newChannel ssh.NewChannel) {
	var target struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(newChannel.ExtraData(), &target); err != nil {
		_ = newChannel.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	address := net.JoinHostPort(target.Host, strconv.Itoa(int(target.Port)))
	s.mu.Lock()
	s.forward = append(s.forward, address)
	s.mu.Unlock()
	upstream, err := net.Dial("tcp", address)
	if err != nil {
		_ = newChannel.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	channel, reqs, err := newChannel.Accept()
	if err != nil {
		upstream.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		_, _ = io.Copy(upstream, channel)
		upstream.Close()
	}()
	go func() {
		_, _ = io.Copy(channel, upstream)
		channel.Close()
	}()
}

func (s *testServer) session(channel ssh.Channel, requests <-chan *ssh.Request) {
	defer channel.Close()
	env := map[string]string{}
	for req := range requests {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			if err := ssh.Unmarshal(req.Payload, &kv); err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			env[kv.Name] = kv.Value
			s.mu.Lock()
			s.envs[kv.Name] = kv.Value
			s.mu.Unlock()
			_ = req.Reply(true, nil)
		case "exec":
			var command struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &command); err != nil {
				_ = req.Reply(false, nil)
				return
			}
			_ = req.Reply(true, nil)
			s.mu.Lock()
			s.execs = append(s.execs, command.Command)
			s.mu.Unlock()
			cmd := exec.Command("/bin/sh", "-c", command.Command)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			cmd.Stdin, cmd.Stdout, cmd.Stderr = channel, channel, channel.Stderr()
			status := uint32(0)
			if err := cmd.Run(); err != nil {
				status = 255
				var exitErr *exec.ExitError
				if errors.As(err, &exitErr) {
					status = uint32(exitErr.ExitCode())
				}
			}
			payload := make([]byte, 4)
			binary.BigEndian.PutUint32(payload, status)
			_, _ = channel.SendRequest("exit-status", false, payload)
			return
		case "subsystem":
			var name struct{ Name string }
			if err := ssh.Unmarshal(req.Payload, &name); err != nil || name.Name != "sftp" {
				_ = req.Reply(false, nil)
				return
			}
			_ = req.Reply(true, nil)
			server, err := sftp.NewServer(channel)
			if err != nil {
				return
			}
			_ = server.Serve()
			return
		default:
			_ = req.Reply(false, nil)
		}
	}
}

func (s *testServer) seen() (execs []string, envs map[string]string, forward []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	envs = map[string]string{}
	for k, v := range s.envs {
		envs[k] = v
	}
	return append([]string(nil), s.execs...), envs, append([]string(nil), s.forward...)
}

// blackhole returns a loopback address whose TCP connects hang: a socket listening with a
// backlog of 0 that never accepts, its queue filled first, so the kernel drops further SYNs.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	address := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Fill the accept queue; once full, a connect gets no SYN-ACK and waits.
	for i := 0; i < 4; i++ {
		conn, err := net.DialTimeout("tcp", address, 300*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { conn.Close() })
	}
	return address
}
