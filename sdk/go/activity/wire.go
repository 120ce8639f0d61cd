package activity

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// The names of the protocol (docs/worker.md, "The wire protocol").
const (
	// FieldManager is the field manager of every write of a worker.
	FieldManager = "activity-worker"
	// MaxPayloadBytes is the largest heartbeat details or result, serialized.
	MaxPayloadBytes = 16 * 1024
	group           = "heartbeat.dev"
	version         = "v1alpha1"
	resource        = "activities"
	// tooManyRequestsWait is the wait after a 429 that names no Retry-After.
	tooManyRequestsWait = time.Second
)

// formatTime is RFC 3339 UTC with microseconds, e.g. 2026-11-21T20:40:00.123456Z.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000000Z")
}

type op struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value"`
}

func testAttempt(attempt int32) op {
	return op{Op: "test", Path: "/status/attempt", Value: json.RawMessage(fmt.Sprint(attempt))}
}

func heartbeatOps(now time.Time, p *pending) []op {
	ts, _ := json.Marshal(formatTime(now)) // a string always marshals
	ops := []op{{Op: "add", Path: "/status/lastHeartbeatTime", Value: ts}}
	if !p.liveness {
		ops = append(ops, op{Op: "add", Path: "/status/heartbeatDetails", Value: p.details})
	}
	return ops
}

// heartbeatPatch tests the attempt, then sets lastHeartbeatTime and heartbeatDetails.
func heartbeatPatch(attempt int32, now time.Time, p *pending) ([]byte, error) {
	return json.Marshal(append([]op{testAttempt(attempt)}, heartbeatOps(now, p)...))
}

// outcomePatch tests the attempt, flushes the pending details (if any), and adds the outcome.
func outcomePatch(attempt int32, now time.Time, flushed *pending, o *outcome) ([]byte, error) {
	ops := []op{testAttempt(attempt)}
	if flushed != nil {
		ops = append(ops, heartbeatOps(now, flushed)...)
	}
	value, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	ops = append(ops, op{Op: "add", Path: "/status/outcome", Value: value})
	return json.Marshal(ops)
}

// outcome is status.outcome.
type outcome struct {
	Attempt   int32           `json:"attempt"`
	Succeeded bool            `json:"succeeded"`
	Result    json.RawMessage `json:"result,omitempty"`
	Failure   *failure        `json:"failure,omitempty"`
	Canceled  bool            `json:"canceled,omitempty"`
	Cause     Cause           `json:"cause,omitempty"`
}

type failure struct {
	Type           string `json:"type"`
	Message        string `json:"message"`
	NonRetryable   bool   `json:"nonRetryable"`
	NextRetryDelay string `json:"nextRetryDelay,omitempty"`
}

// toPayload serializes v, refusing more than MaxPayloadBytes.
func toPayload(what string, v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot serialize %s: %w", what, err)
	}
	if len(b) > MaxPayloadBytes {
		return nil, &PayloadTooLargeError{What: what, Size: len(b)}
	}
	return b, nil
}

// PayloadTooLargeError is returned for heartbeat details or a result larger than MaxPayloadBytes.
type PayloadTooLargeError struct {
	What string // "heartbeat details" or "result"
	Size int    // bytes, serialized
}

// Error names the payload, its size and the limit.
func (e *PayloadTooLargeError) Error() string {
	return fmt.Sprintf("%s is %d bytes serialized, more than the limit of %d bytes", e.What, e.Size, MaxPayloadBytes)
}

// failureKind is what a failed API request means to the worker.
type failureKind int

const (
	retryable  failureKind = iota // 409, 429, 5xx, timeouts, connection errors
	superseded                    // 422 without causes: the test of status.attempt failed
	forbidden                     // 403
	notFound                      // 404
	fatal                         // any other answer: not retried
)

type apiFailure struct {
	kind       failureKind
	message    string
	retryAfter time.Duration
}

// classify maps a client-go error to what it means for the worker. A failed JSON Patch test is a
// 422 without details.causes (found by experiment against kube-apiserver 1.36); a schema
// validation failure is a 422 that lists its causes.
func classify(err error) apiFailure {
	var status apierrors.APIStatus
	if !errors.As(err, &status) || status.Status().Code == 0 {
		return apiFailure{kind: retryable, message: err.Error()}
	}
	s := status.Status()
	msg := s.Message
	var causes int
	var retryAfter int32
	if s.Details != nil {
		causes = len(s.Details.Causes)
		retryAfter = s.Details.RetryAfterSeconds
		for _, c := range s.Details.Causes {
			msg += "; " + c.Message
		}
	}
	switch code := int(s.Code); {
	case code == http.StatusUnprocessableEntity && causes == 0:
		return apiFailure{kind: superseded, message: msg}
	case code == http.StatusForbidden:
		return apiFailure{kind: forbidden, message: msg}
	case code == http.StatusNotFound:
		return apiFailure{kind: notFound, message: msg}
	case code == http.StatusTooManyRequests:
		wait := tooManyRequestsWait
		if retryAfter > 0 {
			wait = time.Duration(retryAfter) * time.Second
		}
		return apiFailure{kind: retryable, message: msg, retryAfter: wait}
	case code == http.StatusConflict || code >= 500:
		return apiFailure{kind: retryable, message: msg}
	default:
		return apiFailure{kind: fatal, message: fmt.Sprintf("%d: %s", code, msg)}
	}
}
