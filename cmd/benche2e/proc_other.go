//go:build !linux

package main

import (
	"errors"
	"syscall"
	"time"
)

func procCPU(int) (time.Duration, error) {
	return 0, errors.New("per-process CPU needs Linux's /proc")
}

func selfCPU() time.Duration { return 0 }

func childAttr() *syscall.SysProcAttr { return nil }
