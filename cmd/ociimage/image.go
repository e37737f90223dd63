package main

import (
	"io/fs"
	"time"
)

// What the keygate image is, in one place: the layout writer, the rootfs
// the Dockerfile copies, and the checks all read it.
const (
	// uid and gid of the nonroot user (distroless' 65532, the one the
	// Kubernetes manifests run as).
	nonroot     = 65532
	user        = "65532:65532"
	binaryPath  = "keygate"
	certsPath   = "etc/ssl/certs/ca-certificates.crt"
	dataDir     = "var/lib/keygate"
	defaultTag  = "keygate:dev"
	mediaLayer  = "application/vnd.oci.image.layer.v1.tar+gzip"
	mediaConfig = "application/vnd.oci.image.config.v1+json"
	mediaManif  = "application/vnd.oci.image.manifest.v1+json"
	mediaIndex  = "application/vnd.oci.image.index.v1+json"
)

// epoch stamps every file and the config: the same inputs give the same
// image digest.
var epoch = time.Unix(0, 0).UTC()

// 8080 REST gateway, 8081 edge, 9090 gRPC, 9464 metrics, 2379/2380 etcd.
var exposedPorts = []string{"8080/tcp", "8081/tcp", "9090/tcp", "9464/tcp", "2379/tcp", "2380/tcp"}

var (
	entrypoint = []string{"/" + binaryPath}
	defaultCmd = []string{"up"}
	env        = []string{
		"PATH=/",
		"SSL_CERT_FILE=/" + certsPath,
		"KEYGATE_DATA_DIR=/" + dataDir,
	}
)

// entry is one file or directory of the image's only layer.
type entry struct {
	path string // relative to /
	mode fs.FileMode
	uid  int
	// Exactly one of body and from for a file; neither for a directory.
	body string
	from string // a file on this machine
}

// entries lists the whole filesystem: no shell, no package manager, no
// libc; the binary is static.
func entries(binary, certs string) []entry {
	dir := func(p string, mode fs.FileMode, uid int) entry {
		return entry{path: p, mode: fs.ModeDir | mode, uid: uid}
	}
	return []entry{
		dir("etc", 0o755, 0),
		// Names for the numeric ids, for tools that look them up.
		{path: "etc/passwd", mode: 0o644, body: "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"},
		{path: "etc/group", mode: 0o644, body: "root:x:0:\nnonroot:x:65532:\n"},
		dir("etc/ssl", 0o755, 0),
		dir("etc/ssl/certs", 0o755, 0),
		// Debian's ca-certificates bundle: model providers are reached over
		// HTTPS.
		{path: certsPath, mode: 0o644, from: certs},
		dir("home", 0o755, 0),
		dir("home/nonroot", 0o700, nonroot),
		dir("tmp", fs.ModeSticky|0o777, 0),
		dir("var", 0o755, 0),
		dir("var/lib", 0o755, 0),
		// `keygate up` keeps its embedded etcd here, as the nonroot user.
		dir(dataDir, 0o755, nonroot),
		{path: binaryPath, mode: 0o755, from: binary},
	}
}

// imageConfig is the OCI image configuration's "config" object.
type imageConfig struct {
	User         string              `json:"User"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts"`
	Env          []string            `json:"Env"`
	Entrypoint   []string            `json:"Entrypoint"`
	Cmd          []string            `json:"Cmd"`
	WorkingDir   string              `json:"WorkingDir"`
}

func runConfig() imageConfig {
	ports := make(map[string]struct{}, len(exposedPorts))
	for _, p := range exposedPorts {
		ports[p] = struct{}{}
	}
	return imageConfig{User: user, ExposedPorts: ports, Env: env, Entrypoint: entrypoint, Cmd: defaultCmd, WorkingDir: "/"}
}
