package activity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Cause says why the worker was told to stop; see CancelCause.
type Cause string

// The causes of a cancellation. Canceled, Paused, Reset and Superseded come from the heartbeat
// reply (docs/reference.md, "The worker protocol"); the others from the worker itself.
const (
	// CauseCanceled: kubectl delete (metadata.deletionTimestamp) or spec.cancelRequested.
	CauseCanceled Cause = "Canceled"
	// CausePaused: spec.paused; unpausing starts a new attempt.
	CausePaused Cause = "Paused"
	// CauseReset: a new spec.reset.requestedAt; a new attempt starts.
	CauseReset Cause = "Reset"
	// CauseSuperseded: a write was refused (the attempt timed out or a newer one runs); nothing more is written.
	CauseSuperseded Cause = "Superseded"
	// CauseNotFound: the Activity no longer exists; nothing more is written.
	CauseNotFound Cause = "NotFound"
	// CauseSignal: the process got SIGTERM (its pod is deleted) or SIGINT.
	CauseSignal Cause = "Signal"
	// CauseForbidden: the service account may not patch activities/status. Fatal: exit 1.
	CauseForbidden Cause = "Forbidden"
	// CauseHeartbeatUndeliverable: heartbeats could not be delivered for longer than the
	// heartbeat timeout. Fatal: exit 1.
	CauseHeartbeatUndeliverable Cause = "HeartbeatUndeliverable"
)

func (c Cause) canReport() bool {
	return c == CauseCanceled || c == CausePaused || c == CauseReset || c == CauseSignal
}

func (c Cause) fatal() bool { return c == CauseForbidden || c == CauseHeartbeatUndeliverable }

// CanceledError is the cause of an activity context's cancellation (context.Cause(ctx)). It
// matches context.Canceled with errors.Is.
type CanceledError struct {
	Cause   Cause
	Message string
}

// Error names the cause.
func (e *CanceledError) Error() string {
	if e.Message == "" {
		return "activity canceled: " + string(e.Cause)
	}
	return fmt.Sprintf("activity canceled: %s: %s", e.Cause, e.Message)
}

// Is makes errors.Is(err, context.Canceled) true.
func (e *CanceledError) Is(target error) bool { return target == context.Canceled }

// ApplicationError is a failure of the activity, reported as the attempt's outcome. Its Type is
// matched exactly against retryPolicy.nonRetryableErrorTypes.
type ApplicationError struct {
	msg            string
	errType        string
	nonRetryable   bool
	nextRetryDelay time.Duration
	cause          error
}

// ApplicationErrorOptions are the options of NewApplicationErrorWithOptions.
type ApplicationErrorOptions struct {
	// NonRetryable fails the activity at once.
	NonRetryable bool
	// Cause is wrapped (errors.Unwrap) and its message appended.
	Cause error
	// NextRetryDelay, when positive, starts the next attempt after this delay instead of the
	// retry policy's backoff (not capped by maximumInterval; still bounded by schedule-to-close).
	NextRetryDelay time.Duration
	// Details are appended to the message as JSON (the outcome has no separate field for them).
	Details []any
}

// NewApplicationError returns a retryable failure of type errType, as Temporal's
// temporal.NewApplicationError. Details are appended to the message as JSON.
func NewApplicationError(message, errType string, details ...any) error {
	return NewApplicationErrorWithOptions(message, errType, ApplicationErrorOptions{Details: details})
}

// NewNonRetryableApplicationError returns a failure that fails the activity at once, as Temporal's
// temporal.NewNonRetryableApplicationError.
func NewNonRetryableApplicationError(message, errType string, cause error, details ...any) error {
	return NewApplicationErrorWithOptions(message, errType,
		ApplicationErrorOptions{NonRetryable: true, Cause: cause, Details: details})
}

// NewApplicationErrorWithOptions returns a failure with options, among them NextRetryDelay.
func NewApplicationErrorWithOptions(message, errType string, opts ApplicationErrorOptions) error {
	if len(opts.Details) > 0 {
		if b, err := json.Marshal(opts.Details); err == nil {
			message = fmt.Sprintf("%s (details: %s)", message, b)
		}
	}
	if opts.Cause != nil {
		message = fmt.Sprintf("%s: %v", message, opts.Cause)
	}
	return &ApplicationError{msg: message, errType: errType, nonRetryable: opts.NonRetryable,
		nextRetryDelay: opts.NextRetryDelay, cause: opts.Cause}
}

// Error is the message.
func (e *ApplicationError) Error() string { return e.msg }

// Type is the error type of the outcome.
func (e *ApplicationError) Type() string { return e.errType }

// NonRetryable says whether the failure fails the activity at once.
func (e *ApplicationError) NonRetryable() bool { return e.nonRetryable }

// NextRetryDelay is the delay before the next attempt (0: the retry policy's backoff).
func (e *ApplicationError) NextRetryDelay() time.Duration { return e.nextRetryDelay }

// Unwrap returns the cause.
func (e *ApplicationError) Unwrap() error { return e.cause }

// ErrNoHeartbeatDetails is returned by GetHeartbeatDetails when no previous attempt heartbeated details.
var ErrNoHeartbeatDetails = errors.New("no heartbeat details")

// errNotActivity is returned by the functions of this package called with a context that Run did not make.
var errNotActivity = errors.New("not an activity context: use the context Run passed to the activity")
