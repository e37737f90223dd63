package keystore

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	keystorev1 "github.com/keygate/keygate/gen/keygate/keystore/v1"
	"github.com/keygate/keygate/pkg/auth"
)

// toStatus is the one place domain errors become gRPC status codes.
func (s *Server) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		return status.Error(codes.InvalidArgument, fe.Error())
	case errors.Is(err, ErrInvalidKey):
		// The same answer for every invalid key, whatever the reason.
		return status.Error(codes.Unauthenticated, ErrInvalidKey.Error())
	case errors.Is(err, auth.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ErrPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ErrStreamBroken):
		return status.Error(codes.Unavailable, ErrStreamBroken.Error())
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		// The caller gave up.
		return status.FromContextError(err).Err()
	}
	s.log.ErrorContext(ctx, "keystore call failed", "err", err)
	return status.Error(codes.Unavailable, "keystore storage unavailable; retry later")
}

// call authenticates the caller, runs op and maps its error. Both run
// within the storage timeout: without etcd quorum a call fails in about a
// second (503) instead of waiting out etcd's own request timeout.
func call[Resp any](s *Server, ctx context.Context, op func(context.Context, *principal) (Resp, error)) (Resp, error) {
	sctx, cancel := context.WithTimeout(ctx, s.storageTimeout)
	defer cancel()
	p, err := s.authenticate(sctx)
	if err != nil {
		var zero Resp
		return zero, s.toStatus(ctx, err)
	}
	r, err := op(sctx, p)
	if err != nil {
		var zero Resp
		return zero, s.toStatus(ctx, err)
	}
	return r, nil
}

func (s *Server) CreateWorkspace(ctx context.Context, req *keystorev1.CreateWorkspaceRequest) (*keystorev1.CreateWorkspaceResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.CreateWorkspaceResponse, error) {
		w, err := s.createWorkspace(ctx, p, req)
		return &keystorev1.CreateWorkspaceResponse{Workspace: w}, err
	})
}

func (s *Server) GetWorkspace(ctx context.Context, req *keystorev1.GetWorkspaceRequest) (*keystorev1.GetWorkspaceResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.GetWorkspaceResponse, error) {
		w, _, err := s.readWorkspace(ctx, p, req.GetWorkspace())
		role := p.role
		if p.root {
			role = keystorev1.Role_ROLE_OWNER
		}
		return &keystorev1.GetWorkspaceResponse{Workspace: w, Caller: p.subject, CallerRole: role}, err
	})
}

func (s *Server) ListWorkspaces(ctx context.Context, req *keystorev1.ListWorkspacesRequest) (*keystorev1.ListWorkspacesResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListWorkspacesResponse, error) {
		return s.listWorkspaces(ctx, p, req)
	})
}

func (s *Server) UpdateWorkspace(ctx context.Context, req *keystorev1.UpdateWorkspaceRequest) (*keystorev1.UpdateWorkspaceResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.UpdateWorkspaceResponse, error) {
		w, err := s.updateWorkspace(ctx, p, req)
		return &keystorev1.UpdateWorkspaceResponse{Workspace: w}, err
	})
}

func (s *Server) SetMember(ctx context.Context, req *keystorev1.SetMemberRequest) (*keystorev1.SetMemberResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.SetMemberResponse, error) {
		m, err := s.setMember(ctx, p, req)
		return &keystorev1.SetMemberResponse{Member: m}, err
	})
}

func (s *Server) ListMembers(ctx context.Context, req *keystorev1.ListMembersRequest) (*keystorev1.ListMembersResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListMembersResponse, error) {
		ms, err := s.listMembers(ctx, p, req.GetWorkspace())
		return &keystorev1.ListMembersResponse{Members: ms}, err
	})
}

func (s *Server) RemoveMember(ctx context.Context, req *keystorev1.RemoveMemberRequest) (*keystorev1.RemoveMemberResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.RemoveMemberResponse, error) {
		return &keystorev1.RemoveMemberResponse{}, s.removeMember(ctx, p, req)
	})
}

func (s *Server) UpdateMember(ctx context.Context, req *keystorev1.UpdateMemberRequest) (*keystorev1.UpdateMemberResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.UpdateMemberResponse, error) {
		m, err := s.updateMember(ctx, p, req)
		return &keystorev1.UpdateMemberResponse{Member: m}, err
	})
}

func (s *Server) ImportKeys(ctx context.Context, req *keystorev1.ImportKeysRequest) (*keystorev1.ImportKeysResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ImportKeysResponse, error) {
		return s.importKeys(ctx, p, req)
	})
}

func (s *Server) CreateKey(ctx context.Context, req *keystorev1.CreateKeyRequest) (*keystorev1.CreateKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.CreateKeyResponse, error) {
		return s.createKey(ctx, p, req)
	})
}

func (s *Server) GetKey(ctx context.Context, req *keystorev1.GetKeyRequest) (*keystorev1.GetKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.GetKeyResponse, error) {
		k, err := s.getKeyOp(ctx, p, req)
		return &keystorev1.GetKeyResponse{Key: k}, err
	})
}

func (s *Server) ListKeys(ctx context.Context, req *keystorev1.ListKeysRequest) (*keystorev1.ListKeysResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListKeysResponse, error) {
		return s.listKeys(ctx, p, req)
	})
}

func (s *Server) UpdateKey(ctx context.Context, req *keystorev1.UpdateKeyRequest) (*keystorev1.UpdateKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.UpdateKeyResponse, error) {
		k, err := s.updateKey(ctx, p, req)
		return &keystorev1.UpdateKeyResponse{Key: k}, err
	})
}

func (s *Server) DeleteKey(ctx context.Context, req *keystorev1.DeleteKeyRequest) (*keystorev1.DeleteKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.DeleteKeyResponse, error) {
		return &keystorev1.DeleteKeyResponse{}, s.deleteKey(ctx, p, req)
	})
}

func (s *Server) RotateKey(ctx context.Context, req *keystorev1.RotateKeyRequest) (*keystorev1.RotateKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.RotateKeyResponse, error) {
		return s.rotateKey(ctx, p, req)
	})
}

func (s *Server) ExpireKey(ctx context.Context, req *keystorev1.ExpireKeyRequest) (*keystorev1.ExpireKeyResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ExpireKeyResponse, error) {
		k, err := s.expireKey(ctx, p, req)
		return &keystorev1.ExpireKeyResponse{Key: k}, err
	})
}

var (
	verifyValid   = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "valid")))
	verifyInvalid = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "invalid")))
)

// VerifyKey needs no credential besides the secret itself.
func (s *Server) VerifyKey(ctx context.Context, req *keystorev1.VerifyKeyRequest) (*keystorev1.VerifyKeyResponse, error) {
	resp, err := s.verifyKey(ctx, req.GetSecret())
	switch {
	case err == nil:
		s.verifications.Add(ctx, 1, verifyValid)
	case errors.Is(err, ErrInvalidKey):
		s.verifications.Add(ctx, 1, verifyInvalid)
	}
	return resp, s.toStatus(ctx, err)
}

// WatchKeyChanges needs the root (service) token.
func (s *Server) WatchKeyChanges(req *keystorev1.WatchKeyChangesRequest, stream grpc.ServerStreamingServer[keystorev1.WatchKeyChangesResponse]) error {
	ctx := stream.Context()
	p, err := s.authenticate(ctx)
	if err == nil {
		err = p.requireRoot()
	}
	if err == nil {
		err = s.watchKeyChanges(ctx, req.GetStartRevision(), stream.Send)
	}
	return s.toStatus(ctx, err)
}

// RecordKeyUse needs the root (service) token: the edge reports which keys
// it admitted requests for.
func (s *Server) RecordKeyUse(ctx context.Context, req *keystorev1.RecordKeyUseRequest) (*keystorev1.RecordKeyUseResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.RecordKeyUseResponse, error) {
		return &keystorev1.RecordKeyUseResponse{}, s.recordKeyUse(ctx, p, req)
	})
}

func (s *Server) CreateProvider(ctx context.Context, req *keystorev1.CreateProviderRequest) (*keystorev1.CreateProviderResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.CreateProviderResponse, error) {
		pr, err := s.createProvider(ctx, p, req.GetProvider())
		return &keystorev1.CreateProviderResponse{Provider: pr}, err
	})
}

func (s *Server) ListProviders(ctx context.Context, _ *keystorev1.ListProvidersRequest) (*keystorev1.ListProvidersResponse, error) {
	return call(s, ctx, func(ctx context.Context, _ *principal) (*keystorev1.ListProvidersResponse, error) {
		ps, err := s.listProviders(ctx)
		return &keystorev1.ListProvidersResponse{Providers: ps}, err
	})
}

func (s *Server) GetProvider(ctx context.Context, req *keystorev1.GetProviderRequest) (*keystorev1.GetProviderResponse, error) {
	return call(s, ctx, func(ctx context.Context, _ *principal) (*keystorev1.GetProviderResponse, error) {
		pr, _, err := s.getProvider(ctx, req.GetProvider())
		return &keystorev1.GetProviderResponse{Provider: pr}, err
	})
}

func (s *Server) UpdateProvider(ctx context.Context, req *keystorev1.UpdateProviderRequest) (*keystorev1.UpdateProviderResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.UpdateProviderResponse, error) {
		pr, err := s.updateProvider(ctx, p, req)
		return &keystorev1.UpdateProviderResponse{Provider: pr}, err
	})
}

func (s *Server) DeleteProvider(ctx context.Context, req *keystorev1.DeleteProviderRequest) (*keystorev1.DeleteProviderResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.DeleteProviderResponse, error) {
		return &keystorev1.DeleteProviderResponse{}, s.deleteProvider(ctx, p, req.GetProvider())
	})
}

func (s *Server) CreateModel(ctx context.Context, req *keystorev1.CreateModelRequest) (*keystorev1.CreateModelResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.CreateModelResponse, error) {
		m, err := s.createModel(ctx, p, req.GetModel())
		return &keystorev1.CreateModelResponse{Model: m}, err
	})
}

func (s *Server) GetModel(ctx context.Context, req *keystorev1.GetModelRequest) (*keystorev1.GetModelResponse, error) {
	return call(s, ctx, func(ctx context.Context, _ *principal) (*keystorev1.GetModelResponse, error) {
		m, _, err := s.getModel(ctx, req.GetModel())
		return &keystorev1.GetModelResponse{Model: m}, err
	})
}

func (s *Server) ListModels(ctx context.Context, _ *keystorev1.ListModelsRequest) (*keystorev1.ListModelsResponse, error) {
	return call(s, ctx, func(ctx context.Context, _ *principal) (*keystorev1.ListModelsResponse, error) {
		ms, err := s.listModels(ctx)
		return &keystorev1.ListModelsResponse{Models: ms}, err
	})
}

func (s *Server) UpdateModel(ctx context.Context, req *keystorev1.UpdateModelRequest) (*keystorev1.UpdateModelResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.UpdateModelResponse, error) {
		m, err := s.updateModel(ctx, p, req)
		return &keystorev1.UpdateModelResponse{Model: m}, err
	})
}

func (s *Server) DeleteModel(ctx context.Context, req *keystorev1.DeleteModelRequest) (*keystorev1.DeleteModelResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.DeleteModelResponse, error) {
		return &keystorev1.DeleteModelResponse{}, s.deleteModel(ctx, p, req.GetModel())
	})
}

func (s *Server) ListAuditEvents(ctx context.Context, req *keystorev1.ListAuditEventsRequest) (*keystorev1.ListAuditEventsResponse, error) {
	return call(s, ctx, func(ctx context.Context, p *principal) (*keystorev1.ListAuditEventsResponse, error) {
		return s.listAuditEvents(ctx, p, req)
	})
}
