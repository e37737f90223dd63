// Package spool is the edge's write-ahead log of usage records: each
// record is written to a local file before the edge lets go of it, and
// replayed after a restart until the ledger has acknowledged it.
//
// A spool directory holds:
//
//	producer        the producer id its records are numbered under (fixed)
//	acked           the highest sequence number the ledger acknowledged
//	<first>.seg     segments: records first, first+1, … each framed as
//	                uvarint length, CRC-32C, bytes
//	lock            held (flock) by the one process using the directory
//
// A record is in the operating system's page cache once Append returns,
// so killing the process loses nothing; Sync (run every SyncInterval by
// the edge) bounds what the loss of the whole machine can take. The acked
// file may lag behind the ledger: the records replayed then are
// duplicates the ledger recognises by producer and sequence number.
package spool

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// SegmentBytes is the size past which a new segment starts.
const SegmentBytes = 64 << 20

// maxRecord bounds one record, far above any usage record.
const maxRecord = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Spool is one open spool directory. Append, Ack and Sync are safe to
// call concurrently.
type Spool struct {
	dir      string
	producer string
	lock     *os.File
	segBytes int64 // SegmentBytes; tests shrink it

	mu       sync.Mutex
	segs     []uint64 // first sequence number of each segment, ascending
	cur      *os.File // the last segment, open for appending
	curBytes int64
	next     uint64 // sequence number of the next Append
	acked    uint64
	// savedAcked is the value in the acked file.
	savedAcked uint64
	dirty      bool
	buf        []byte
}

// Open opens (or creates) the spool in dir and returns the records the
// ledger has not acknowledged, oldest first, the first with sequence
// number Next() - len(records).
func Open(dir string) (*Spool, [][]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		return nil, nil, fmt.Errorf("spool: %s is in use by another process: %w", dir, err)
	}
	s := &Spool{dir: dir, lock: lock, segBytes: SegmentBytes}
	recs, err := s.load()
	if err != nil {
		_ = lock.Close()
		return nil, nil, err
	}
	return s, recs, nil
}

// Producer is the id this spool's records are numbered under.
func (s *Spool) Producer() string { return s.producer }

// Next is the sequence number the next Append gets.
func (s *Spool) Next() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next
}

func (s *Spool) load() ([][]byte, error) {
	if err := s.loadProducer(); err != nil {
		return nil, err
	}
	acked, err := readUint(filepath.Join(s.dir, "acked"))
	if err != nil {
		return nil, err
	}
	s.acked, s.savedAcked = acked, acked
	if s.segs, err = listSegments(s.dir); err != nil {
		return nil, err
	}
	var recs [][]byte
	var lastEnd uint64 // one past the last segment's last record
	s.next = acked + 1
	for i, first := range s.segs {
		rs, size, err := readSegment(s.segPath(first))
		if err != nil {
			return nil, err
		}
		if i == len(s.segs)-1 {
			// A crash may have cut the last record short: drop the tail.
			if err := os.Truncate(s.segPath(first), size); err != nil {
				return nil, fmt.Errorf("spool: %w", err)
			}
			s.curBytes = size
		}
		for j, r := range rs {
			if seq := first + uint64(j); seq > acked {
				recs = append(recs, r)
			}
		}
		s.next = max(s.next, first+uint64(len(rs)))
		lastEnd = first + uint64(len(rs))
	}
	// Records are replayed from acked+1 on; a gap would mean a lost
	// segment, which numbering from the first replayed record hides.
	if len(recs) > 0 && s.next-uint64(len(recs)) != acked+1 {
		return nil, fmt.Errorf("spool: segments in %s do not follow the acknowledged sequence %d", s.dir, acked)
	}
	// The acknowledgement may be ahead of the last segment's records (its
	// tail lost with the machine, or cut as corrupt): appended there, new
	// records would be read back under the lost ones' numbers. Start a
	// segment at s.next instead; the old ones, all acknowledged, go.
	if len(s.segs) > 0 && lastEnd < s.next {
		s.segs = append(s.segs, s.next)
		s.curBytes = 0
	}
	return recs, s.dropAcked()
}

func (s *Spool) loadProducer() error {
	p := filepath.Join(s.dir, "producer")
	b, err := os.ReadFile(p)
	if err == nil {
		s.producer = strings.TrimSpace(string(b))
		if s.producer == "" {
			return fmt.Errorf("spool: %s is empty", p)
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: %w", err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	s.producer = "edge-" + hex.EncodeToString(rnd[:])
	return writeFileAtomic(p, []byte(s.producer+"\n"))
}

func (s *Spool) segPath(first uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d.seg", first))
}

func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var segs []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("spool: unexpected file %s", e.Name())
		}
		segs = append(segs, n)
	}
	slices.Sort(segs)
	return segs, nil
}

// readSegment reads a segment's whole records and the byte length they
// span; a short or corrupt record ends it, and so does a zero length
// (Append writes no empty record; zeros are what a file extended by a
// crash of the machine may read as, and would pass the checksum).
func readSegment(path string) ([][]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var recs [][]byte
	var off int64
	for {
		n, err := binary.ReadUvarint(r)
		if err != nil || n == 0 || n > maxRecord {
			return recs, off, nil
		}
		var sum [4]byte
		if _, err := io.ReadFull(r, sum[:]); err != nil {
			return recs, off, nil
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil || crc32.Checksum(b, castagnoli) != binary.LittleEndian.Uint32(sum[:]) {
			return recs, off, nil
		}
		recs = append(recs, b)
		off += int64(uvarintLen(n)) + 4 + int64(n)
	}
}

func uvarintLen(n uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], n)
}

// Append writes rec and returns its sequence number. Once it returns the
// record survives the process; Sync makes it survive the machine.
func (s *Spool) Append(rec []byte) (uint64, error) {
	if len(rec) == 0 || len(rec) > maxRecord {
		// Such a record could not be read back.
		return 0, fmt.Errorf("spool: a record must have 1 to %d bytes, not %d", maxRecord, len(rec))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.curBytes >= s.segBytes {
		if err := s.rotate(); err != nil {
			return 0, err
		}
	}
	s.buf = binary.AppendUvarint(s.buf[:0], uint64(len(rec)))
	s.buf = binary.LittleEndian.AppendUint32(s.buf, crc32.Checksum(rec, castagnoli))
	s.buf = append(s.buf, rec...)
	if _, err := s.cur.Write(s.buf); err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	s.curBytes += int64(len(s.buf))
	s.dirty = true
	seq := s.next
	s.next++
	return seq, nil
}

// rotate closes the current segment and starts one at s.next, or reopens
// the last segment after a restart.
func (s *Spool) rotate() error {
	if s.cur != nil {
		if err := s.cur.Sync(); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if err := s.cur.Close(); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		s.cur = nil
	}
	first := s.next
	n := len(s.segs)
	switch {
	case n > 0 && s.curBytes > 0 && s.curBytes < s.segBytes:
		first = s.segs[n-1] // after a restart: the last segment has room
	case n > 0 && s.curBytes == 0 && s.segs[n-1] == first:
		// An empty last segment already starts here.
	default:
		s.segs = append(s.segs, first)
		s.curBytes = 0
	}
	f, err := os.OpenFile(s.segPath(first), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	s.cur = f
	return nil
}

// Sync flushes appended records to stable storage and saves the
// acknowledgements since the last Sync.
func (s *Spool) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dirty && s.cur != nil {
		s.dirty = false
		if err := s.cur.Sync(); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	}
	return s.saveAcked()
}

// Ack records that the ledger holds every record up to seq. The acked
// file and the segments it frees are written at the next Sync (or Close):
// an acknowledgement lost with the process only replays duplicates, which
// the ledger recognises.
func (s *Spool) Ack(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acked = max(s.acked, seq)
	return nil
}

// saveAcked writes the acked file if it moved, and deletes the segments
// holding only acknowledged records.
func (s *Spool) saveAcked() error {
	if s.acked == s.savedAcked {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(s.dir, "acked"), []byte(strconv.FormatUint(s.acked, 10)+"\n")); err != nil {
		return err
	}
	s.savedAcked = s.acked
	return s.dropAcked()
}

// dropAcked deletes every segment but the last whose records are all
// acknowledged.
func (s *Spool) dropAcked() error {
	for len(s.segs) > 1 && s.segs[1]-1 <= s.acked {
		if err := os.Remove(s.segPath(s.segs[0])); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: %w", err)
		}
		s.segs = s.segs[1:]
	}
	return nil
}

// Bytes is the disk the spool's segments take.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, first := range s.segs {
		if fi, err := os.Stat(s.segPath(first)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// Close syncs and closes the spool.
func (s *Spool) Close() error {
	err := s.Sync()
	s.mu.Lock()
	if s.cur != nil {
		err = errors.Join(err, s.cur.Close())
		s.cur = nil
	}
	s.mu.Unlock()
	return errors.Join(err, s.lock.Close())
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("spool: %s: %w", path, err)
	}
	return n, nil
}

// writeFileAtomic replaces path with b: a crash leaves the old or the new
// content, never a torn one.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}
