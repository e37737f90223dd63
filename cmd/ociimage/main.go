// Command ociimage builds keygate's container image without Docker or a
// registry: an OCI image (as an oci-archive tarball) of one layer holding the
// static binary, Debian's CA certificates and a nonroot user, on an empty
// base. It also checks what it built and runs the binary taken out of it.
//
//	ociimage build -binary bin/keygate -certs /etc/ssl/certs/ca-certificates.crt -out bin/keygate-image.tar
//	ociimage check -extract bin/keygate-from-image bin/keygate-image.tar
//	ociimage smoke bin/keygate-from-image
//	ociimage dockerfile Dockerfile
//	ociimage rootfs -binary … -certs … -out DIR   (what the Dockerfile copies)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("want a command: build, check, smoke, dockerfile or rootfs")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	binary := fs.String("binary", "", "the static keygate binary (CGO_ENABLED=0)")
	certs := fs.String("certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle of Debian's ca-certificates package")
	out := fs.String("out", "", "where to write: the archive (build) or a directory (rootfs)")
	tag := fs.String("tag", defaultTag, "the image's reference name in the archive")
	arch := fs.String("arch", runtime.GOARCH, "architecture of the binary")
	extract := fs.String("extract", "", "check: where to write the binary taken out of the image")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "build", "rootfs":
		if *binary == "" || *out == "" {
			return errors.New(args[0] + ": -binary and -out are required")
		}
		if _, err := os.Stat(*certs); err != nil {
			return fmt.Errorf("%w: install Debian's ca-certificates package (apt-get install ca-certificates)", err)
		}
		if args[0] == "rootfs" {
			return writeRootfs(*out, entries(*binary, *certs))
		}
		l, err := buildLayer(entries(*binary, *certs))
		if err != nil {
			return err
		}
		return writeArchive(*out, *arch, *tag, l)
	case "check":
		if fs.NArg() != 1 || *extract == "" {
			return errors.New("check: want -extract FILE and one archive")
		}
		return checkArchive(fs.Arg(0), *extract)
	case "smoke":
		if fs.NArg() != 1 {
			return errors.New("smoke: want one binary")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return smoke(ctx, fs.Arg(0))
	case "dockerfile":
		if fs.NArg() != 1 {
			return errors.New("dockerfile: want one Dockerfile")
		}
		return checkDockerfile(fs.Arg(0))
	}
	return fmt.Errorf("unknown command %q: want build, check, smoke, dockerfile or rootfs", args[0])
}
