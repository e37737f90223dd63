package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// staticBinary builds a tiny static program to stand in for keygate.
func staticBinary(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	src := filepath.Join(dir, "main.go")
	require.NoError(tb, os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644))
	out := filepath.Join(dir, "keygate")
	build := exec.Command("go", "build", "-o", out, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	build.Dir = dir
	b, err := build.CombinedOutput()
	require.NoError(tb, err, "%s", b)
	return out
}

func writeImage(tb testing.TB, es []entry) string {
	tb.Helper()
	l, err := buildLayer(es)
	require.NoError(tb, err)
	out := filepath.Join(tb.TempDir(), "image.tar")
	require.NoError(tb, writeArchive(out, "amd64", defaultTag, l))
	return out
}

func TestImage(t *testing.T) {
	t.Parallel()
	bin := staticBinary(t)
	certs := filepath.Join(t.TempDir(), "ca.crt")
	require.NoError(t, os.WriteFile(certs, []byte("not a real bundle\n"), 0o644))

	t.Run("checks and gives back the binary", func(t *testing.T) {
		t.Parallel()
		archive := writeImage(t, entries(bin, certs))
		got := filepath.Join(t.TempDir(), "keygate")
		require.NoError(t, checkArchive(archive, got))
		want, err := os.ReadFile(bin)
		require.NoError(t, err)
		gotBytes, err := os.ReadFile(got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, gotBytes))
	})
	t.Run("reproducible", func(t *testing.T) {
		t.Parallel()
		a, err := os.ReadFile(writeImage(t, entries(bin, certs)))
		require.NoError(t, err)
		b, err := os.ReadFile(writeImage(t, entries(bin, certs)))
		require.NoError(t, err)
		require.True(t, bytes.Equal(a, b))
	})
	t.Run("a shell is refused", func(t *testing.T) {
		t.Parallel()
		es := append(entries(bin, certs), entry{path: "bin/sh", mode: 0o755, body: "#!"})
		err := checkArchive(writeImage(t, es), filepath.Join(t.TempDir(), "keygate"))
		require.ErrorContains(t, err, "shell")
	})
	t.Run("a binary that is not ELF is refused", func(t *testing.T) {
		t.Parallel()
		es := entries(bin, certs)
		es[len(es)-1] = entry{path: binaryPath, mode: 0o755, body: "#!/bin/sh\n"}
		err := checkArchive(writeImage(t, es), filepath.Join(t.TempDir(), "keygate"))
		require.Error(t, err)
	})
}

// TestRootfs: the Dockerfile copies this directory; it holds what the layer
// holds.
func TestRootfs(t *testing.T) {
	t.Parallel()
	bin := staticBinary(t)
	dir := t.TempDir()
	require.NoError(t, writeRootfs(dir, entries(bin, bin)))
	for _, e := range entries(bin, bin) {
		fi, err := os.Stat(filepath.Join(dir, e.path))
		require.NoError(t, err, e.path)
		require.Equal(t, e.mode, fi.Mode()&(os.ModeDir|os.ModeSticky|os.ModePerm), e.path)
	}
}

func TestDockerfileMatchesImage(t *testing.T) {
	t.Parallel()
	require.NoError(t, checkDockerfile(filepath.Join("..", "..", "Dockerfile")))
	other := filepath.Join(t.TempDir(), "Dockerfile")
	require.NoError(t, os.WriteFile(other, []byte("FROM scratch\nUSER 0\nENTRYPOINT [\"/keygate\"]\nCMD [\"up\"]\n"), 0o644))
	require.ErrorContains(t, checkDockerfile(other), "USER")
}
