package remote

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	p "github.com/pulumi/pulumi-go-provider"
	"github.com/pulumi/pulumi-go-provider/infer"
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/retry"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

const (
	defaultUser           = "root"
	defaultPort           = 22
	defaultDialErrorLimit = 10
	defaultPerDialTimeout = 15
	unlimitedDials        = -1
)

// Connection is how to reach a host: the same fields, types and defaults as pulumi-command's
// `remote.Connection` (port is a number there, so a float64 here).
type Connection struct {
	hop
	Proxy *ProxyConnection `pulumi:"proxy,optional"`
}

// ProxyConnection is the bastion a Connection is dialled through.
type ProxyConnection struct {
	hop
}

// hop is one SSH endpoint with its credentials, pin and dial limits.
type hop struct {
	User               *string  `pulumi:"user,optional"`
	Password           *string  `pulumi:"password,optional"           provider:"secret"`
	Host               *string  `pulumi:"host"`
	Port               *float64 `pulumi:"port,optional"`
	PrivateKey         *string  `pulumi:"privateKey,optional"         provider:"secret"`
	PrivateKeyPassword *string  `pulumi:"privateKeyPassword,optional" provider:"secret"`
	AgentSocketPath    *string  `pulumi:"agentSocketPath,optional"`
	DialErrorLimit     *int     `pulumi:"dialErrorLimit,optional"`
	PerDialTimeout     *int     `pulumi:"perDialTimeout,optional"`
	HostKey            *string  `pulumi:"hostKey,optional"`
}

func annotateHop(a infer.Annotator, h *hop, what string) {
	a.Describe(&h.Host, "The address of the "+what+".")
	a.Describe(&h.User, "The user to log in as.")
	a.SetDefault(&h.User, defaultUser)
	a.Describe(&h.Port, "The SSH port.")
	a.SetDefault(&h.Port, defaultPort)
	a.Describe(&h.Password, "A password, tried after the private key.")
	a.Describe(&h.PrivateKey, "An SSH private key (PEM or OpenSSH format).")
	a.Describe(&h.PrivateKeyPassword, "The passphrase of an encrypted private key.")
	a.Describe(&h.AgentSocketPath, "An SSH agent socket; SSH_AUTH_SOCK when unset.")
	a.Describe(&h.DialErrorLimit, "Failed dials allowed before giving up; -1 for no limit.")
	a.SetDefault(&h.DialErrorLimit, defaultDialErrorLimit)
	a.Describe(&h.PerDialTimeout, "Seconds each TCP connect may take; 0 for no limit.")
	a.SetDefault(&h.PerDialTimeout, defaultPerDialTimeout)
	a.Describe(&h.HostKey, "The expected host key (`ssh-ed25519 AAAA...`); without it any host key is accepted.")
}

// Annotate sets the schema token, descriptions and defaults.
func (c *Connection) Annotate(a infer.Annotator) {
	a.SetToken("remote", "Connection")
	a.Describe(&c, "How to reach a remote host over SSH.")
	annotateHop(a, &c.hop, "host")
	a.Describe(&c.Proxy, "A bastion to dial the host through.")
}

// Annotate sets the schema token, descriptions and defaults.
func (c *ProxyConnection) Annotate(a infer.Annotator) {
	a.SetToken("remote", "ProxyConnection")
	a.Describe(&c, "How to reach the bastion a host is dialled through.")
	annotateHop(a, &c.hop, "bastion")
}

func (h *hop) endpoint() string {
	port := defaultPort
	if h.Port != nil {
		port = int(*h.Port)
	}
	host := ""
	if h.Host != nil {
		host = *h.Host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func (h *hop) dialErrorLimit() int {
	if h.DialErrorLimit == nil {
		return defaultDialErrorLimit
	}
	return *h.DialErrorLimit
}

// clientConfig builds the SSH client settings of one hop: the pin when a host key is given
// (as upstream: none is accepted without it), then key, password and agent auth.
func (h *hop) clientConfig() (*ssh.ClientConfig, error) {
	config := &ssh.ClientConfig{User: defaultUser}
	if h.User != nil {
		config.User = *h.User
	}
	timeout := defaultPerDialTimeout
	if h.PerDialTimeout != nil {
		timeout = *h.PerDialTimeout
	}
	// Like x/crypto's ssh.Dial (and so upstream), this bounds the TCP connect only.
	config.Timeout = time.Duration(timeout) * time.Second

	if h.HostKey != nil {
		pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(*h.HostKey))
		if err != nil {
			return nil, fmt.Errorf("failed to parse host key: %w", err)
		}
		config.HostKeyCallback = ssh.FixedHostKey(pinned)
		config.HostKeyAlgorithms = hostKeyAlgorithms(pinned.Type())
	} else {
		config.HostKeyCallback = ssh.InsecureIgnoreHostKey() //nolint:gosec // upstream's behaviour without a pin
	}

	if h.PrivateKey != nil {
		var signer ssh.Signer
		var err error
		if h.PrivateKeyPassword != nil {
			signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(*h.PrivateKey), []byte(*h.PrivateKeyPassword))
		} else {
			signer, err = ssh.ParsePrivateKey([]byte(*h.PrivateKey))
		}
		if err != nil {
			return nil, fmt.Errorf("failed to parse private key: %w", err)
		}
		config.Auth = append(config.Auth, ssh.PublicKeys(signer))
	}
	if h.Password != nil {
		password := *h.Password
		config.Auth = append(config.Auth, ssh.Password(password),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
				answers := make([]string, len(questions))
				for i := range answers {
					answers[i] = password
				}
				return answers, nil
			}))
	}
	socket := os.Getenv("SSH_AUTH_SOCK")
	if h.AgentSocketPath != nil {
		socket = *h.AgentSocketPath
	}
	if socket != "" {
		conn, err := net.Dial("unix", socket)
		if err != nil {
			return nil, fmt.Errorf("failed to reach the SSH agent at %s: %w", socket, err)
		}
		config.Auth = append(config.Auth, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
	}
	return config, nil
}

// hostKeyAlgorithms asks the server for the pinned key's kind only, so that a server holding
// several host keys shows the pinned one. An RSA key may be signed with SHA-2 (OpenSSH 8.8+
// refuses ssh-rsa/SHA-1 signatures).
func hostKeyAlgorithms(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// withRetry calls dial until it succeeds or has failed limit+1 times (limit -1: forever),
// with the Pulumi SDK's backoff between tries, as pulumi-command does.
func withRetry[T any](ctx context.Context, what string, limit int, dial func() (T, error)) (T, error) {
	var zero T
	var lastErr error
	ok, result, err := retry.Until(ctx, retry.Acceptor{
		Accept: func(try int, _ time.Duration) (bool, any, error) {
			value, dialErr := dial()
			if dialErr == nil {
				return true, value, nil
			}
			lastErr = dialErr
			dials := try + 1
			if limit != unlimitedDials && dials > limit {
				// Upstream's wording and count (the retries, one less than the dials).
				return true, nil, fmt.Errorf("after %d failed attempts: %w", try, dialErr)
			}
			bound := "inf"
			if limit != unlimitedDials {
				bound = strconv.Itoa(limit)
			}
			p.GetLogger(ctx).InfoStatusf("%s %d/%s failed: retrying", what, dials, bound)
			return false, nil, nil
		},
	})
	if err != nil {
		return zero, err
	}
	if !ok {
		if lastErr != nil {
			return zero, fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
		}
		return zero, ctx.Err()
	}
	return result.(T), nil
}

// Dial opens an SSH client to the host, through the bastion when a proxy is set: the bastion
// is dialled with its own key, pin and limits; from there a direct-tcpip channel is opened to
// the host, and SSH is spoken end to end with the host's own key and pin.
func (c *Connection) Dial(ctx context.Context) (*ssh.Client, error) {
	config, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	endpoint := c.endpoint()
	if c.Proxy == nil {
		return withRetry(ctx, "Dial", c.dialErrorLimit(), func() (*ssh.Client, error) {
			return ssh.Dial("tcp", endpoint, config)
		})
	}

	proxyConfig, err := c.Proxy.clientConfig()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	bastion, err := withRetry(ctx, "Dial proxy", c.Proxy.dialErrorLimit(), func() (*ssh.Client, error) {
		return ssh.Dial("tcp", c.Proxy.endpoint(), proxyConfig)
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	// As upstream, the onward dial from the bastion has no timeout of its own.
	conn, err := withRetry(ctx, "Dial from proxy", c.dialErrorLimit(), func() (net.Conn, error) {
		return bastion.Dial("tcp", endpoint)
	})
	if err != nil {
		bastion.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	clientConn, channels, requests, err := ssh.NewClientConn(conn, endpoint, config)
	if err != nil {
		conn.Close()
		bastion.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	client := ssh.NewClient(clientConn, channels, requests)
	// The bastion's client lives as long as the host's: closing the host's closes it too.
	go func() {
		_ = client.Wait()
		bastion.Close()
	}()
	return client, nil
}
