package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/internal/etcdembed"
	"github.com/keygate/keygate/internal/etcdtest"
)

// TestEtcdTLS runs the member `keygate etcd` would run with the flags the
// Helm chart sets (client and peer TLS, client certificates required, a
// plaintext metrics listener) and dials it as a role does.
func TestEtcdTLS(t *testing.T) {
	pki := newTestPKI(t)
	metrics := etcdtest.FreeAddr(t)
	member, _, err := parseConfig("etcd", []string{
		"--data-dir", t.TempDir(),
		"--etcd-client-url", "https://" + etcdtest.FreeAddr(t),
		"--etcd-peer-url", "https://" + etcdtest.FreeAddr(t),
		"--etcd-listen-metrics-url", "http://" + metrics,
		"--etcd-server-cert", pki.cert, "--etcd-server-key", pki.key, "--etcd-server-ca", pki.ca,
		"--etcd-peer-cert", pki.cert, "--etcd-peer-key", pki.key, "--etcd-peer-ca", pki.ca,
	}, func(string) string { return "" })
	require.NoError(t, err)
	srv, err := etcdembed.Start(t.Context(), memberConfig(member))
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	require.Equal(t, "https", srv.Endpoints()[0][:5])

	dial := func(args ...string) (*clientv3.Client, error) {
		role, _, err := parseConfig("serve", append([]string{"--etcd-endpoints", srv.Endpoints()[0]}, args...), func(string) string { return "" })
		require.NoError(t, err)
		tlsCfg, err := etcdClientTLS(role)
		require.NoError(t, err)
		return clientv3.New(clientv3.Config{Endpoints: role.EtcdEndpoints, TLS: tlsCfg, DialTimeout: 2 * time.Second})
	}
	t.Run("client certificate", func(t *testing.T) {
		cli, err := dial("--etcd-ca", pki.ca, "--etcd-cert", pki.cert, "--etcd-key", pki.key)
		require.NoError(t, err)
		defer cli.Close()
		_, err = cli.Put(t.Context(), "tls", "ok")
		require.NoError(t, err)
	})
	t.Run("no client certificate is refused", func(t *testing.T) {
		cli, err := dial("--etcd-ca", pki.ca)
		require.NoError(t, err) // the client dials lazily
		defer cli.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		_, err = cli.Put(ctx, "tls", "no")
		require.Error(t, err)
	})
	t.Run("probes on the plaintext metrics listener", func(t *testing.T) {
		res, err := http.Get("http://" + metrics + "/readyz")
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode)
	})
}

// TestEtcdPeerTLS forms a 3-member cluster whose members talk to each other
// over mutual TLS only, as the chart's StatefulSet does, and reads on one
// member what was written on another.
func TestEtcdPeerTLS(t *testing.T) {
	pki := newTestPKI(t)
	const n = 3
	var clients, peers, cluster []string
	for i := range n {
		clients = append(clients, "https://"+etcdtest.FreeAddr(t))
		peers = append(peers, "https://"+etcdtest.FreeAddr(t))
		cluster = append(cluster, fmt.Sprintf("m%d=%s", i, peers[i]))
	}
	errs := make(chan error, n)
	for i := range n {
		member, _, err := parseConfig("etcd", []string{
			"--data-dir", t.TempDir(), "--etcd-name", fmt.Sprintf("m%d", i),
			"--etcd-client-url", clients[i], "--etcd-peer-url", peers[i],
			"--etcd-initial-cluster", strings.Join(cluster, ","),
			"--etcd-server-cert", pki.cert, "--etcd-server-key", pki.key,
			"--etcd-peer-cert", pki.cert, "--etcd-peer-key", pki.key, "--etcd-peer-ca", pki.ca,
		}, func(string) string { return "" })
		require.NoError(t, err)
		// Members start together: each waits for a quorum.
		go func() {
			srv, err := etcdembed.Start(t.Context(), memberConfig(member))
			if err == nil {
				t.Cleanup(srv.Close)
			}
			errs <- err
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	role, _, err := parseConfig("serve", []string{"--etcd-endpoints", strings.Join(clients, ","), "--etcd-ca", pki.ca}, func(string) string { return "" })
	require.NoError(t, err)
	tlsCfg, err := etcdClientTLS(role)
	require.NoError(t, err)
	for i, ep := range clients {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, TLS: tlsCfg, DialTimeout: 2 * time.Second})
		require.NoError(t, err)
		defer cli.Close()
		if i == 0 {
			_, err = cli.Put(t.Context(), "peer", "tls")
			require.NoError(t, err)
			continue
		}
		res, err := cli.Get(t.Context(), "peer")
		require.NoError(t, err)
		require.Len(t, res.Kvs, 1)
	}
}

func TestEtcdTLSFlagsGoTogether(t *testing.T) {
	t.Parallel()
	for name, args := range map[string][]string{
		"server cert without key": {"--etcd-server-cert", "c.pem"},
		"peer CA without cert":    {"--etcd-peer-ca", "ca.pem"},
		"client key without cert": {"--etcd-key", "k.pem"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := parseConfig("etcd", args, func(string) string { return "" })
			require.Error(t, err)
		})
	}
}

// testPKI is a CA and one certificate it signed for 127.0.0.1, usable as
// server and client (what etcd peers need), as PEM files.
type testPKI struct{ ca, cert, key string }

func newTestPKI(tb testing.TB) testPKI {
	tb.Helper()
	dir := tb.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(tb, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keygate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(tb, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(tb, err)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "keygate-etcd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caTmpl, &key.PublicKey, caKey)
	require.NoError(tb, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(tb, err)
	p := testPKI{ca: filepath.Join(dir, "ca.crt"), cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key")}
	writePEM(tb, p.ca, "CERTIFICATE", caDER)
	writePEM(tb, p.cert, "CERTIFICATE", leafDER)
	writePEM(tb, p.key, "EC PRIVATE KEY", keyDER)
	return p
}

func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	require.NoError(tb, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}
